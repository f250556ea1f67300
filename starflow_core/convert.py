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
never overwritten without --overwrite. Errors a user can cause exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from starflow_core.config import FlowConfig
from starflow_core.generation.inputs import prompts_to_labels
from starflow_core.official.arguments import from_official_yaml, resolve_config
from starflow_core.official.convert import convert_official_flow
from starflow_core.presets import preset
from starflow_core.sources.pipeline_folder import (
    FLOW_CONFIG,
    FLOW_WEIGHTS,
    PipelineParts,
    write_pipeline_folder,
)
from starflow_core.sources.resolve import resolve

EXIT_USAGE = 2
DTYPES = ("float32", "bfloat16", "float16")


def build_parser(prog: str = "starflow-convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    flow = commands.add_parser(
        "flow", help="an official .pth (or one of our flow folders) -> our flow folder"
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
        "pipeline", help="a pipeline folder (flow, and vae + text encoder where the model needs them)"
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
    add_output_arguments(pipeline)
    return parser


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    parser.add_argument("--dtype", choices=DTYPES, help="store floating-point weights in this dtype")
    parser.add_argument("--quantize", type=int, choices=(4, 8), help="MLX-quantize the flow to 4 or 8 bits")
    parser.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
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


def convert_flow(args: argparse.Namespace, resave: Resaver) -> Path:
    source, out = args.source, args.output
    if source.is_dir():
        if not (source / FLOW_CONFIG).is_file():
            raise FileNotFoundError(f"{source} is not one of our flow folders (no {FLOW_CONFIG})")
        if args.dtype is None and args.quantize is None:
            raise ValueError("re-saving a flow folder needs --dtype and/or --quantize")
        resave(source, out, args.dtype, args.quantize, args.group_size)
        return out
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint at {source}")
    config = flow_config(args, source)
    if args.quantize is None:
        return convert_official_flow(source, config, out, dtype=args.dtype or "float32")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        convert_official_flow(source, config, Path(tmp) / "flow")
        resave(Path(tmp) / "flow", out, args.dtype, args.quantize, args.group_size)
    return out


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
    )
    parts.check()
    config = parts.flow_config
    if parts.default_prompts and config.num_classes:
        prompts_to_labels(parts.default_prompts, config.num_classes, parts.labels)  # names a bad prompt
    return parts


def convert_pipeline(args: argparse.Namespace, resave: Resaver) -> Path:
    parts = described_parts(args)
    if args.dtype is None and args.quantize is None:
        write_pipeline_folder(parts, args.output, overwrite=args.overwrite)
        return args.output
    with tempfile.TemporaryDirectory(dir=args.output.parent) as tmp:
        flow = Path(tmp) / "transformer"
        resave(parts.transformer, flow, args.dtype, args.quantize, args.group_size)
        write_pipeline_folder(dataclasses.replace(parts, transformer=flow), args.output, overwrite=True)
    return args.output


def run(args: argparse.Namespace, resave: Resaver) -> int:
    out = args.output
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.command == "flow":
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        convert_flow(args, resave)
    else:
        convert_pipeline(args, resave)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")
    if (out / FLOW_WEIGHTS).is_file() or (out / "model_index.json").is_file():
        print(f"done: {out}")
    return 0


def main(
    argv: Sequence[str] | None = None, resave: Resaver = no_resaver, prog: str = "starflow-convert"
) -> int:
    """The conversion command; `resave` (a twin's) casts or quantizes our flow folders."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    warnings.simplefilter("default")  # notes (e.g. an official flag with no effect): one line each
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"{prog}: warning: {message}\n"
    try:
        return run(args, resave)
    except (ValueError, OSError, NotImplementedError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
