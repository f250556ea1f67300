"""Encode an image folder into latent + text-feature shards for training latent models, with MLX.

    python -m starflow_mlx.encode_dataset --images my_images/ --vae sd-vae-ft-ema/ \\
        --text-encoder flan-t5-xl/ --out my_shards/ --image-size 256 --txt-size 128

The twin of `python -m starflow_torch.encode_dataset` (same options and shard format), so
a Mac prepares its data without torch. The folder follows the imagefolder convention
(metadata.jsonl with file_name and text), or class subfolders with --conditioning label.
Training then reads the shards: python -m starflow_mlx.train --set train.data=my_shards/ ...
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import mlx.core as mx

import starflow_mlx  # noqa: F401, I001  (loads a system BLAS into MLX on Linux before mlx.core)

from .training.encode import describe, encode_dataset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="starflow-mlx-encode", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="image folder (metadata.jsonl or class subfolders)")
    parser.add_argument("--out", required=True, help="output folder for the shards and index.json")
    parser.add_argument("--vae", required=True, help="AutoencoderKL folder (diffusers layout)")
    parser.add_argument("--text-encoder", help="T5 folder with tokenizer files (text conditioning)")
    parser.add_argument("--conditioning", choices=("text", "label", "none"), default="text")
    parser.add_argument("--image-size", type=int, default=256, help="pixels (the 1:1 side)")
    parser.add_argument("--txt-size", type=int, default=128, help="text tokens (padded / truncated)")
    parser.add_argument(
        "--multiple", type=int, default=8, help="bucket sides are multiples of this (VAE x patch)"
    )
    parser.add_argument("--buckets", action="store_true", help="aspect-ratio buckets instead of 1:1 crops")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from tqdm import tqdm

    from .vae import AutoencoderKL

    args = parse_args(argv)
    vae = AutoencoderKL.from_pretrained(args.vae)
    text_encoder = None
    if args.text_encoder:
        from .text import TextEncoder

        text_encoder = TextEncoder.from_pretrained(args.text_encoder)
    with tqdm(desc="encode", unit="img") as bar:
        index = encode_dataset(
            args.images,
            args.out,
            vae,
            text_encoder,
            conditioning=args.conditioning,
            image_size=args.image_size,
            txt_size=args.txt_size,
            multiple=args.multiple,
            buckets=args.buckets,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            dtype=getattr(mx, args.dtype),
            progress=bar.update,
        )
    print(f"wrote {args.out}: {describe(index)}")


if __name__ == "__main__":
    main()
