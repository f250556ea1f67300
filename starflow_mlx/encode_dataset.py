"""Encode an image folder into latent + text-feature shards for training latent models, with MLX.

    python -m starflow_mlx.encode_dataset --images my_images/ --vae sd-vae-ft-ema/ \\
        --text-encoder flan-t5-xl/ --out my_shards/ --image-size 256 --txt-size 128

The twin of `python -m starflow_torch.encode_dataset` (same options and shard format), so
a Mac prepares its data without torch. The folder follows the imagefolder convention
(metadata.jsonl with file_name and text), or class subfolders with --conditioning label.
Training then reads the shards: python -m starflow_mlx.train --set train.data=my_shards/ ...
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx

from starflow_core.training.image_folders import encode_argument_parser, encode_command

from .training.encode import encode_dataset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = encode_argument_parser("starflow-mlx-encode", __doc__.splitlines()[0])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    from .vae import AutoencoderKL

    args = parse_args(argv)

    def encode(out: Path) -> dict:
        vae = AutoencoderKL.from_pretrained(args.vae)
        text_encoder = None
        if args.text_encoder:
            from .text import TextEncoder

            text_encoder = TextEncoder.from_pretrained(args.text_encoder)
        with tqdm(desc="encode", unit="img") as bar:
            index = encode_dataset(
                args.images,
                out,
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
        return index

    return encode_command("starflow-mlx-encode", args, encode)


if __name__ == "__main__":
    sys.exit(main())
