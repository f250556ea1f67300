"""starflow-convert: official checkpoints and Hub repos -> our folders.

    starflow-convert flow starflow_3B_t2i_256x256.pth --preset starflow-3b-t2i-256 -o flow/
    starflow-convert flow official.pth --config starflow_3B_t2i_256x256.yaml -o flow/ --dtype bfloat16
    starflow-convert flow flow/ -o flow-q4/ --quantize 4          # MLX quantization
    starflow-convert pipeline --model starflow-3b-t2i-256 -o starflow-3b/   # flow + VAE + T5 folder
    starflow-convert pipeline --model runs/x/checkpoints/step_00002000/ema -o my-model/ \
        --name my-model --labels cat dog --default-prompts cat dog --guidance 1.0 --dtype float16

`.pth` files are converted without torch, one tensor in memory at a time. Casting or
quantizing one of our folders runs in a twin: `starflow-convert` is `python -m
starflow_mlx.convert`; `python -m starflow_torch.convert` casts with torch. Outputs are
never overwritten without --overwrite, and replaced only once the new one is complete (it is
built in a staging folder beside it). Errors a user can cause exit with status 2, Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from starflow_core.command_line import EXIT_USAGE, HelpWithDefaults, command_parser, positive_int, run_command
from starflow_core.config import FlowConfig
from starflow_core.generation.inputs import prompts_to_labels
from starflow_core.official.arguments import from_official_yaml, resolve_config
from starflow_core.official.convert import convert_official_checkpoint
from starflow_core.presets import preset
from starflow_core.sources.pipeline_folder import (
    COMPONENT_CLASSES,
    FLOW_CONFIG,
    FLOW_WEIGHTS,
    PipelineParts,
    check_part_files,
    fill_pipeline_folder,
)
from starflow_core.sources.resolve import resolve
from starflow_core.staging import check_output_apart, staged_folder
from starflow_core.video.settings import VideoDefaults

__all__ = ["EXIT_USAGE", "build_parser", "main", "run"]
DTYPES = ("float32", "bfloat16", "float16")


def build_parser(module: str = "starflow_mlx.convert") -> argparse.ArgumentParser:
    """The options of `module` (starflow_mlx.convert or starflow_torch.convert)."""
    parser = command_parser(module, __doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    flow = commands.add_parser(
        "flow",
        help="an official .pth (or one of our flow folders) -> our flow folder",
        formatter_class=HelpWithDefaults,
    )
    flow.add_argument("source", type=Path, help="official .pth checkpoint, or our flow folder to re-save")
    config = flow.add_mutually_exclusive_group()
    config.add_argument("--preset", help="named configuration, e.g. starflow-3b-t2i-256")
    config.add_argument(
        "--config", type=Path, help="official YAML, official constructor JSON or our config.json"
    )
    flow.add_argument("--txt-dim", type=int, help="text encoder width, if an official YAML cannot tell")
    add_output_arguments(flow)

    pipeline = commands.add_parser(
        "pipeline",
        help="a pipeline folder (flow, and vae + text encoder where the model needs them)",
        formatter_class=HelpWithDefaults,
    )
    pipeline.add_argument(
        "--model",
        default="starflow-3b-t2i-256",
        help="release name, pipeline folder, flow folder (e.g. a training checkpoint's ema/) or Hub repo",
    )
    pipeline.add_argument("--name", help="the pipeline's name in model_index.json (default: the source's)")
    pipeline.add_argument("--labels", nargs="+", help="class names of a label model, in label order")
    pipeline.add_argument("--default-prompts", nargs="+", help="what generate samples when given no prompt")
    pipeline.add_argument("--guidance", type=float, help="default guidance (model_index.json sampling)")
    pipeline.add_argument(
        "--num-frames", type=positive_int, help="a video model's default clip length (model_index.json video)"
    )
    pipeline.add_argument(
        "--fps", type=positive_int, help="a video model's default frame rate (model_index.json video)"
    )
    add_output_arguments(pipeline)
    return parser


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    parser.add_argument("--dtype", choices=DTYPES, help="store floating-point weights in this dtype")
    parser.add_argument("--quantize", type=int, choices=(4, 8), help="MLX-quantize the flow to 4 or 8 bits")
    parser.add_argument(
        "--group-size",
        type=int,
        default=64,
        choices=(32, 64, 128),
        help="weights sharing one quantization scale",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


# ----- library calls ------------------------------------------------------------------------
def flow_config(args: argparse.Namespace, source: Path) -> FlowConfig:
    if args.preset:
        return preset(args.preset)
    if args.config is None:
        raise ValueError(f"{source} is an official checkpoint: pass --preset NAME or --config FILE")
    if args.config.suffix in (".yaml", ".yml"):
        return from_official_yaml(args.config, txt_dim=args.txt_dim)
    return resolve_config(args.config)


# (flow folder, output folder, dtype name or None, quantization bits or None, group size)
Resaver = Callable[[Path, Path, "str | None", "int | None", int], None]


def no_resaver(folder: Path, out: Path, dtype: str | None, bits: int | None, group_size: int) -> None:
    raise NotImplementedError(
        "re-saving a flow folder in another dtype or quantized runs in a twin: use "
        "python -m starflow_mlx.convert (MLX; --quantize) or python -m starflow_torch.convert"
    )


def check_flow_folder(source: Path, args: argparse.Namespace) -> None:
    """Refuse what cannot work before anything is written: a folder that is not ours, a
    re-save that changes nothing, quantizing weights that are already quantized."""
    if not (source / FLOW_CONFIG).is_file():
        raise FileNotFoundError(f"{source} is not one of our flow folders (no {FLOW_CONFIG})")
    if args.dtype is None and args.quantize is None:
        raise ValueError("re-saving a flow folder needs --dtype and/or --quantize")
    quantization = FlowConfig.load(source / FLOW_CONFIG).quantization
    if args.quantize is not None and quantization is not None:
        bits, group = quantization
        raise ValueError(
            f"{source} is already quantized ({bits} bits, group size {group}); quantize the "
            "full-precision folder it was made from instead"
        )


def convert_flow(args: argparse.Namespace, resave: Resaver, staging: Path) -> None:
    """Write the converted flow into the empty `staging` folder."""
    source = args.source
    if source.is_dir():
        resave(source, staging, args.dtype, args.quantize, args.group_size)
        return
    config = flow_config(args, source)
    if args.quantize is None:
        convert_official_checkpoint(source, config, staging, dtype=args.dtype or "float32")
        return
    full = staging / ".float32"  # the official weights in our format, quantized from here
    convert_official_checkpoint(source, config, full)
    resave(full, staging, args.dtype, args.quantize, args.group_size)
    shutil.rmtree(full)


def described_parts(args: argparse.Namespace) -> PipelineParts:
    """The parts of --model with the name, class names, default prompts and guidance given
    on the command line in place of the source's; checked before anything is written."""
    parts = resolve(args.model)
    parts = dataclasses.replace(
        parts,
        name=args.name or parts.name,
        labels=tuple(args.labels) if args.labels else parts.labels,
        default_prompts=tuple(args.default_prompts) if args.default_prompts else parts.default_prompts,
        sampling=parts.sampling.merged(guidance=args.guidance),
        video=video_defaults(args, parts),
    )
    parts.check()
    config = parts.flow_config
    if parts.default_prompts and config.num_classes:
        prompts_to_labels(parts.default_prompts, config.num_classes, parts.labels)  # names a bad prompt
    return parts


def video_defaults(args: argparse.Namespace, parts: PipelineParts) -> VideoDefaults | None:
    """The source's video defaults with --num-frames / --fps in place of its own; a model that
    names no clip length or rate yet needs both."""
    given = {k: v for k, v in (("num_frames", args.num_frames), ("fps", args.fps)) if v is not None}
    if not given:
        return parts.video
    if not parts.is_video:
        raise ValueError(f"--num-frames and --fps describe a video model; {args.model} is an image model")
    if parts.video is None and len(given) < 2:
        raise ValueError(
            f"{args.model} names no clip length or frame rate yet: give both --num-frames and --fps"
        )
    return dataclasses.replace(parts.video or VideoDefaults(**given), **given)


def convert_pipeline(args: argparse.Namespace, resave: Resaver, parts: PipelineParts, staging: Path) -> None:
    """Write the pipeline folder into the empty `staging` folder (its final place: args.output)."""
    if args.dtype is not None or args.quantize is not None:
        flow = staging / ".transformer"  # re-saved here, hard-linked into transformer/ below
        resave(parts.transformer, flow, args.dtype, args.quantize, args.group_size)
        parts = dataclasses.replace(parts, transformer=flow)
    fill_pipeline_folder(parts, staging, args.output)
    shutil.rmtree(staging / ".transformer", ignore_errors=True)


def inputs_of(args: argparse.Namespace) -> tuple[list[Path | None], PipelineParts | None]:
    """Check every input before anything is written; (the paths an output must not replace,
    the pipeline's parts)."""
    if args.command == "flow":
        source = args.source
        if source.is_dir():
            check_flow_folder(source, args)
        elif not source.is_file():
            raise FileNotFoundError(f"no checkpoint at {source}")
        else:
            flow_config(args, source)  # a missing or broken --config fails here, not after writing
        return [source, args.config], None
    parts = described_parts(args)
    check_part_files(parts)  # a damaged weights file is refused, not hard-linked into a "done" folder
    if args.quantize is not None:
        check_flow_folder(parts.transformer, args)
    model = Path(args.model)
    return [model if model.exists() else None, *(getattr(parts, n) for n in COMPONENT_CLASSES)], parts


def run(args: argparse.Namespace, resave: Resaver) -> int:
    out = args.output
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    inputs, parts = inputs_of(args)
    check_output_apart(out, inputs)
    # built in a staging folder beside `out`; an existing `out` is replaced only when it is complete
    with staged_folder(out, overwrite=args.overwrite) as staging:
        if args.command == "flow":
            convert_flow(args, resave, staging)
        else:
            convert_pipeline(args, resave, parts, staging)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    if (out / FLOW_WEIGHTS).is_file() or (out / "model_index.json").is_file():
        print(f"done: {out}")
    return 0


def main(
    argv: Sequence[str] | None = None, resave: Resaver = no_resaver, module: str = "starflow_mlx.convert"
) -> int:
    """The conversion command of `module`; `resave` (its twin's) casts or quantizes our flow folders."""
    parser = build_parser(module)
    args = parser.parse_args(argv)
    prog = parser.prog
    warnings.simplefilter("default")  # notes (e.g. an official flag with no effect): one line each
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"{prog}: warning: {message}\n"
    return run_command(prog, lambda: run(args, resave))


if __name__ == "__main__":
    sys.exit(main())
