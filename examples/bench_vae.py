"""Time SD-VAE decoding per image, MLX vs diffusers, on random weights (no download).

    python examples/bench_vae.py --latent-size 32 --batch 1 --repeats 3

Builds the stabilityai/sd-vae-ft-ema architecture with random weights in diffusers, saves it to
a temporary folder and loads it with starflow_mlx. Reports seconds per image (best of
``--repeats`` after one warm-up) and whether MLX runs on the system OpenBLAS.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL

from starflow_mlx import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux)
from starflow_mlx.blas import blas_status
from starflow_mlx.vae import AutoencoderKL, mx  # mlx.core, imported after the BLAS loader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.tiny_components import SD_VAE_CONFIG  # noqa: E402


def best_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-size", type=int, default=32, help="latent side; images are 8x larger")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        reference = DiffusersAutoencoderKL(**SD_VAE_CONFIG).eval()
        reference.save_pretrained(folder)
        vae = AutoencoderKL.from_pretrained(folder)

    latents = torch.randn(args.batch, 4, args.latent_size, args.latent_size)
    latents_nhwc = mx.array(latents.permute(0, 2, 3, 1).numpy())

    def decode_torch() -> None:
        with torch.inference_mode():
            reference.decode(latents / reference.config.scaling_factor)

    def decode_mlx() -> None:
        mx.eval(vae.decode(latents_nhwc, batch_size=args.batch))

    side = 8 * args.latent_size
    print(f"SD-VAE decode, {side}x{side} images, batch {args.batch}, float32, torch threads {args.threads}")
    print(f"MLX BLAS: {blas_status()}")
    print(f"diffusers: {best_seconds(decode_torch, args.repeats) / args.batch:.2f} s / image")
    print(f"MLX:       {best_seconds(decode_mlx, args.repeats) / args.batch:.2f} s / image")


if __name__ == "__main__":
    main()
