"""Time SD-VAE decoding per image, MLX vs diffusers, on random weights (no download).

    python examples/bench_vae.py --latent-size 32 --batch 1 --repeats 3 --threads 2

Builds the stabilityai/sd-vae-ft-ema architecture with random weights in diffusers, saves it
and the latents to a temporary folder, then times each library in a process of its own: MLX
with the system OpenBLAS (as the MLX command lines run it), diffusers in a process that never
loaded it (loading OpenBLAS process-wide changes torch's results and speed; docs/blas.md).
Reports seconds per image (best of ``--repeats`` after one warm-up) and the conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def best_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def time_mlx(folder: Path, latents_path: Path, repeats: int, threads: int) -> dict:
    from starflow_mlx import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux)

    # isort: split
    import numpy as np

    from starflow_mlx.bench import set_threads
    from starflow_mlx.blas import blas_status
    from starflow_mlx.vae import AutoencoderKL, mx  # mlx.core, imported after the BLAS loader

    set_threads(threads)
    vae = AutoencoderKL.from_pretrained(folder)
    latents = mx.array(np.load(latents_path).transpose(0, 2, 3, 1))  # (B, h, w, 4)
    seconds = best_seconds(lambda: mx.eval(vae.decode(latents, batch_size=latents.shape[0])), repeats)
    return {"seconds": seconds, "blas": blas_status()}


def time_diffusers(folder: Path, latents_path: Path, repeats: int, threads: int) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    torch.set_num_threads(threads)
    reference = DiffusersAutoencoderKL.from_pretrained(folder).eval()
    latents = torch.from_numpy(np.load(latents_path))

    def decode() -> None:
        with torch.inference_mode():
            reference.decode(latents / reference.config.scaling_factor)

    return {"seconds": best_seconds(decode, repeats), "torch": torch.__version__}


def build(folder: Path, latents_path: Path, batch: int, latent_size: int) -> None:
    """Random SD-VAE weights (diffusers layout, which both libraries load) and random latents."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from helpers.tiny_components import SD_VAE_CONFIG

    torch.manual_seed(0)
    DiffusersAutoencoderKL(**SD_VAE_CONFIG).save_pretrained(folder)
    np.save(
        latents_path,
        np.random.default_rng(0).standard_normal((batch, 4, latent_size, latent_size), np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-size", type=int, default=32, help="latent side; images are 8x larger")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS / torch threads")
    parser.add_argument(
        "--worker", choices=("mlx", "diffusers"), help=argparse.SUPPRESS
    )  # one timing process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        timer = time_mlx if args.worker == "mlx" else time_diffusers
        result = timer(args.folder, args.folder / "latents.npy", args.repeats, args.threads)
        print(json.dumps(result))
        return

    side = 8 * args.latent_size
    print(f"SD-VAE decode, {side}x{side} images, batch {args.batch}, float32, {args.threads} thread(s)")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        build(folder, folder / "latents.npy", args.batch, args.latent_size)
        for worker in ("diffusers", "mlx"):
            command = [sys.executable, __file__, f"--worker={worker}", f"--folder={folder}"]
            command += [f"--repeats={args.repeats}", f"--threads={args.threads}"]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                raise SystemExit(f"the {worker} timing process failed:\n{completed.stderr[-3000:]}")
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            extra = (
                f"  (BLAS: {result['blas']['library'] or result['blas']['reason']})"
                if worker == "mlx"
                else ""
            )
            print(f"{worker:10s} {result['seconds'] / args.batch:.2f} s / image{extra}", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
