"""Encode an image folder into latent + text-feature shards for training latent models.

    python -m starflow_torch.encode_dataset --images my_images/ --vae sd-vae-ft-ema/ \\
        --text-encoder flan-t5-xl/ -o my_shards/ --image-size 256 --txt-size 128

The folder follows the imagefolder convention (metadata.jsonl with file_name and
text), or class subfolders with --conditioning label. Training then reads the shards:
python -m starflow_torch.train --set train.data=my_shards/ ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from starflow_core.training.image_folders import encode_argument_parser, encode_command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = encode_argument_parser("starflow_torch.encode_dataset", __doc__.splitlines()[0])
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.device is None:
        import torch  # after the arguments: --help answers before torch loads

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def on_device(component, device: str):
    """Move a component to `device` if it is a torch module (the wrappers may manage this)."""
    return component.to(device) if hasattr(component, "to") else component


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    import torch

    from .training.encode import encode_dataset
    from .vae import AutoencoderKL

    def encode(out: Path) -> dict:
        vae = on_device(AutoencoderKL.from_pretrained(args.vae), args.device)
        text_encoder = None
        if args.text_encoder:
            from .text import TextEncoder

            text_encoder = TextEncoder.from_pretrained(args.text_encoder, device=args.device)
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
                dtype=getattr(torch, args.dtype),
                device=args.device,
                progress=bar.update,
            )
        return index

    return encode_command("starflow_torch.encode_dataset", args, encode)


if __name__ == "__main__":
    sys.exit(main())
