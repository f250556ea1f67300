"""The generate command's flags for what is written besides the images, and how: --overwrite,
--metadata (JSON sidecars), --config-from-metadata (make an image again from its parameters),
--stepwise-output-dir (the image after every flow block). Used by starflow_core.generation.cli.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starflow_core.generation.record import VIDEO_KEYS, generate_flags, read_parameters
from starflow_core.generation.writer import ImageWriter, write_steps


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What is written besides the images, and how; and regenerating from an image's metadata."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of the same name")
    parser.add_argument(
        "--metadata", action="store_true", help="also write each image's parameters to <image>.json"
    )
    parser.add_argument(
        "--config-from-metadata",
        type=Path,
        metavar="IMAGE",
        help="make an image again from the parameters stored in IMAGE (or its .json); flags given "
        "here replace the stored ones",
    )
    parser.add_argument(
        "--stepwise-output-dir",
        type=Path,
        metavar="DIR",
        help="also write each image as decoded after every flow block (the flow at work) into DIR",
    )


def fill_from_metadata(args: argparse.Namespace) -> None:
    """--config-from-metadata: every setting the user did not give, from the image's parameters."""
    if args.config_from_metadata is None:
        return
    flags = generate_flags(read_parameters(args.config_from_metadata))
    prompts_given = bool(args.prompts or args.prompt or args.prompt_file)
    for dest, value in flags.items():
        if dest == "prompt":
            args.prompt = args.prompt if prompts_given else value
        elif dest == "seed":
            args.seed = args.seed or (None if args.n_images else value)
        elif dest in ("no_denoise", "grid"):
            setattr(args, dest, getattr(args, dest) or value)
        elif dest == "dtype":
            args.dtype = value if args.dtype == "auto" and value else args.dtype
        elif not hasattr(args, dest) and dest in VIDEO_KEYS:
            raise ValueError(
                f"{args.config_from_metadata} is a video ({dest.replace('_', ' ')} {value}); this "
                "command makes images"
            )
        elif not hasattr(args, dest):
            if value is not None:
                flag = "--" + dest.replace("_", "-")
                raise ValueError(
                    f"{args.config_from_metadata} was made with {flag} {value}, which this command lacks "
                    "(MLX only); regenerate it with python -m starflow_mlx.generate"
                )
        elif getattr(args, dest) is None:
            setattr(args, dest, value)


def announce(writer: ImageWriter, path: Path) -> None:
    """Print the image just written (and its sidecar), so every path written is on the console."""
    print(f"wrote {path}")
    if writer.sidecar:
        print(f"wrote {writer.written[-1]}")


def stepwise_writer(
    folder: Path | None, pipe: Any, indices: list[int], seeds: list[int]
) -> Callable[[int, Any], None] | None:
    """--stepwise-output-dir: a block callback decoding and writing the images after each block."""
    if folder is None:
        return None
    steps = iter(range(1, 10_000))

    def write(block_index: int, latents: Any) -> None:
        images = pipe.decode_latents(latents)
        written = write_steps(folder, block_index, next(steps), images, indices, seeds)
        print(f"wrote {len(written)} image(s) after flow block {block_index} into {folder}")

    return write
