"""Peak memory of the MLX Wan2.2 VAE against the video's length: chunk by chunk (the causal cache)
vs the whole video at once.

    python benchmarks/wan_vae_memory.py --frames 5 17 33 --size 128 --width-divisor 4

Random weights (no download) at the Wan2.2 layout with channel widths divided by
``--width-divisor`` (1: the released model, 2.8 GB of weights). For each length, in this order:
encode (the first frame, then 4 frames at a time), encode with every frame after the first in
one chunk, decode streamed with ``iter_decode`` (each
chunk dropped as it comes, as a video writer would), ``decode`` (the whole video returned), and
decode with every latent frame after the first in one chunk (``chunk_frames`` = all). Reports
MLX's peak memory above the weights, in MB, and the decoded video's own size.
"""

from __future__ import annotations

import argparse
import json

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from starflow_core.wan_vae_config import WanVAEConfig
from starflow_mlx.wan_vae import AutoencoderKLWan

MB = 2**20


def random_model(width_divisor: int) -> AutoencoderKLWan:
    config = WanVAEConfig(base_dim=160 // width_divisor, decoder_base_dim=256 // width_divisor)
    model = AutoencoderKLWan(config)
    mx.random.seed(0)
    model.update(tree_map(lambda p: 0.02 * mx.random.normal(p.shape), model.parameters()))
    mx.eval(model.parameters())
    return model


def measure(run):
    """(MLX's peak memory in MB above what was live before ``run``, its evaluated result)."""
    mx.clear_cache()
    baseline = mx.get_active_memory()
    mx.reset_peak_memory()
    result = run()
    mx.eval(result)
    return (mx.get_peak_memory() - baseline) / MB, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 17, 33], help="video lengths (4k + 1)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels (multiple of 16)")
    parser.add_argument(
        "--width-divisor", type=int, default=4, help="divide the released channel widths by this"
    )
    args = parser.parse_args()

    model = random_model(args.width_divisor)
    weights = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
    rows = []
    for frames in args.frames:
        video = mx.random.uniform(-1, 1, (1, frames, args.size, args.size, 3))
        mx.eval(video)
        encode, latents = measure(lambda video=video: model.encode(video))
        encode_all, _ = measure(
            lambda video=video: model.encode(video, chunk_frames=max(1, (video.shape[1] - 1) // 4))
        )
        streamed, _ = measure(lambda latents=latents: [None for _ in model.iter_decode(latents)])
        whole, _ = measure(lambda latents=latents: model.decode(latents))
        one_chunk, _ = measure(lambda latents=latents: model.decode(latents, chunk_frames=latents.shape[1]))
        rows.append(
            dict(
                frames=frames,
                latent_frames=latents.shape[1],
                encode_mb=round(encode, 1),
                encode_one_chunk_mb=round(encode_all, 1),
                decode_streamed_mb=round(streamed, 1),
                decode_mb=round(whole, 1),
                decode_one_chunk_mb=round(one_chunk, 1),
                video_mb=round(video.nbytes / MB, 1),
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    print(
        json.dumps(
            dict(
                size=args.size,
                width_divisor=args.width_divisor,
                weights_mb=round(weights / MB, 1),
                device=str(mx.default_device()),
                mlx=mx.__version__,
            )
        )
    )


if __name__ == "__main__":
    main()
