"""The scoring command line shared by `python -m starflow_mlx.score` and `python -m starflow_torch.score`.

    python -m starflow_mlx.score a.png b.png --label seven          # the demo digits model
    python -m starflow_mlx.score photo.png --model starflow-3b-t2i-256 --prompt "a cat" --json

Prints the exact log-likelihood of each image (bits per dimension and nats) and what it is
the density of (starflow_core.generation.scoring). Every image is read and checked before
the model loads; errors a user can cause print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from starflow_core.command_line import EXIT_USAGE, command_parser, run_command
from starflow_core.generation.edit_inputs import prepare_images
from starflow_core.generation.inputs import prompts_to_labels
from starflow_core.generation.precision import DTYPE_CHOICES, QUANTIZE_BITS, TEXT_QUANTIZE_BITS, Precision
from starflow_core.generation.resource_check import check_disk
from starflow_core.generation.scoring import Scores, score_images
from starflow_core.generation.validation import check_size_limit
from starflow_core.sources import PipelineParts, resolve
from starflow_core.sources.releases import DEMO_FOLDER, release_by_name

__all__ = ["EXIT_USAGE", "build_parser", "main", "run"]


def build_parser(module: str, description: str, torch: bool = False) -> argparse.ArgumentParser:
    """The options of `module` (starflow_mlx.score or starflow_torch.score)."""
    parser = command_parser(module, description)
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument(
        "--prompt", action="append", help="text condition: one for all images or one per image (repeat)"
    )
    condition.add_argument(
        "--label", action="append", help="class name or index: one for all images or one per image (repeat)"
    )
    parser.add_argument("--model", help="release name, pipeline folder or Hub repo id; default: the demo")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--batch-size", type=int, default=16, help="images scored together")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="weights and activations (default float32: the reference likelihood; auto: bfloat16 on a "
        "GPU); the flow's log-det and Gaussian term stay float32",
    )
    if torch:
        parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    else:  # smaller weights change the model being scored: the header says so
        parser.add_argument(
            "--quantize", type=int, choices=QUANTIZE_BITS, help="quantize the flow to 4 or 8 bits as it loads"
        )
        parser.add_argument(
            "--quantize-text", type=int, choices=TEXT_QUANTIZE_BITS, help="quantize the T5 encoder to 8 bits"
        )
    parser.add_argument(
        "--strict", action="store_true", help="refuse checkpoints holding tensors the model does not use"
    )
    parser.add_argument(
        "--no-resource-check",
        action="store_true",
        help="download even if the disk check says it will not fit",
    )
    parser.add_argument(
        "--no-size-limit",
        action="store_true",
        help="score images with sides beyond 4x the model's training size (slow: time grows with the "
        "square of the pixel count)",
    )
    return parser


def conditions(args: argparse.Namespace, parts: PipelineParts, count: int) -> list[str]:
    """One condition per image; "" (the null condition) when none is given."""
    config = parts.flow_config
    label_model = config.label_conditioned or (config.family == "tarflow" and config.num_classes > 0)
    given = args.label or args.prompt
    if given and not label_model and config.txt_dim == 0:
        raise ValueError("this model is unconditional; drop --prompt/--label")
    if args.label and not label_model:
        raise ValueError("this model is text-conditioned; use --prompt instead of --label")
    values = list(given or [""])
    if len(values) not in (1, count):
        raise ValueError(f"got {len(values)} conditions for {count} images; give one or {count}")
    if label_model:
        prompts_to_labels(values, config.num_classes, parts.labels)  # raises naming the valid classes
    return values * count if len(values) == 1 else values


def format_table(paths: Sequence[Path], scores: Scores, model: str, precision: Precision) -> str:
    width = max(len("image"), *(len(str(path)) for path in paths))
    lines = [
        f"# {model} ({describe(precision)}): bits/dim = -log2 p / dims, p = {scores.measured}",
        f"{'image':<{width}}  {'condition':<16}  {'bits/dim':>10}  {'log p (nats)':>14}  {'dims':>7}",
    ]
    for path, prompt, bits, nats, dims in zip(
        paths, scores.prompts, scores.bits_per_dim, scores.log_prob, scores.dims, strict=True
    ):
        condition = json.dumps(prompt)
        lines.append(f"{str(path):<{width}}  {condition:<16}  {bits:>10.4f}  {nats:>14.3f}  {dims:>7d}")
    return "\n".join(lines)


def describe(precision: Precision) -> str:
    quantized = precision.quantization_name()
    return precision.dtype + ("" if quantized == "none" else f", {quantized}")


def as_json(paths: Sequence[Path], scores: Scores, model: str, precision: Precision) -> str:
    rows = [
        {
            "image": str(path),
            "condition": prompt,
            "bits_per_dim": float(bits),
            "log_prob_nats": float(nats),
            "dims": int(dims),
        }
        for path, prompt, bits, nats, dims in zip(
            paths, scores.prompts, scores.bits_per_dim, scores.log_prob, scores.dims, strict=True
        )
    ]
    header = {"model": model, "measured": scores.measured, **precision.metadata()}
    return json.dumps({**header, "images": rows}, indent=2)


def read_images(paths: Sequence[Path], channels: int, multiple: int) -> list:
    return [prepare_images(path, 1, channels, None, multiple)[0] for path in paths]


Loader = Callable[[PipelineParts, argparse.Namespace], Any]  # -> the twin's StarFlowPipeline
PrecisionOf = Callable[[argparse.Namespace], Precision]  # --dtype auto resolved for the device


def run(args: argparse.Namespace, load: Loader, precision_of: PrecisionOf) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.model is None:
        if not (DEMO_FOLDER / "model_index.json").is_file():
            raise FileNotFoundError(f"the embedded demo model is not installed ({DEMO_FOLDER}); pass --model")
        args.model = str(DEMO_FOLDER)
    precision = precision_of(args)
    images = None
    release = release_by_name(args.model)
    if release is not None:  # the images are read and the disk checked before anything downloads
        channels = 3 if release.vae_repo else release.config.in_channels  # SD-VAE takes RGB
        multiple = (8 if release.vae_repo else 1) * release.config.patch_size
        images = read_images(args.images, channels, multiple)
        if not args.no_resource_check:
            check_disk(release, precision)
    parts = resolve(args.model, dtype=precision.dtype, strict=args.strict)
    prompts = conditions(args, parts, len(args.images))
    if images is None:
        images = read_images(
            args.images, parts.image_channels, parts.vae_downsample * parts.flow_config.patch_size
        )
    trained = parts.flow_config.img_size * parts.vae_downsample
    for path, image in zip(args.images, images, strict=True):  # as generate bounds --height/--width
        try:
            check_size_limit(*image.shape[:2], trained, args.no_size_limit)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    pipe = load(parts, args)
    with warnings.catch_warnings():  # the images were read (and any resize announced) above
        warnings.simplefilter("ignore")
        scores = score_images(pipe, images, prompts, args.batch_size)
    print(
        as_json(args.images, scores, parts.name, precision)
        if args.json
        else format_table(args.images, scores, parts.name, precision)
    )
    return 0


def main(
    argv: Sequence[str] | None, parser: argparse.ArgumentParser, load: Loader, precision_of: PrecisionOf
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"{parser.prog}: warning: {message}\n"
    return run_command(parser.prog, lambda: run(args, load, precision_of))
