"""Generate images with STARFlow in MLX.

    python -m starflow_mlx.generate "a film still of a cat playing piano" \
        --model starflow-3b-t2i-256 --seed 0 1 --cfg 3.6 --jacobi --output cat.png
    python -m starflow_mlx.generate "a red fox running in the snow" --model starflow-v-7b-t2v-480p \
        --num-frames 81 --fps 16 --aspect-ratio 16:9 --quantize 8 -o fox.mp4

With no arguments it runs the embedded demo model. All flags: --help.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import sys
from collections.abc import Sequence

import mlx.core as mx

from starflow_core.generation import cli as generate_cli
from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import physical_memory
from starflow_core.sources.pipeline_folder import PipelineParts

from .pipeline import StarFlowPipeline, auto_dtype
from .video_pipeline import StarFlowVideoPipeline


def precision(args: argparse.Namespace) -> Precision:
    return Precision(auto_dtype(args.dtype), args.quantize, args.quantize_text)


def load_pipeline(parts: PipelineParts, args: argparse.Namespace) -> StarFlowPipeline:
    chosen = precision(args)
    return StarFlowPipeline.from_pretrained(
        parts,
        dtype=chosen.dtype,
        decoder=args.decoder,
        quantize=chosen.quantize,
        text_quantize=chosen.text_quantize,
        strict=args.strict,
    )


def load_video_pipeline(parts: PipelineParts, args: argparse.Namespace) -> StarFlowVideoPipeline:
    chosen = precision(args)
    return StarFlowVideoPipeline.from_pretrained(
        parts,
        dtype=chosen.dtype,
        quantize=chosen.quantize,
        text_quantize=chosen.text_quantize,
        strict=args.strict,
    )


def available_memory(args: argparse.Namespace | None = None) -> tuple[int, str]:
    """What MLX's arrays may use: Metal's recommended working set on a GPU, else the RAM."""
    if mx.default_device() == mx.gpu:
        info = mx.device_info()
        for key in ("max_recommended_working_set_size", "memory_size", "total_memory"):
            if info.get(key):
                return int(info[key]), f"{info.get('device_name', 'GPU')} {key.replace('_', ' ')}"
    return physical_memory(), "physical memory"


def main(argv: Sequence[str] | None = None) -> int:
    parser = generate_cli.build_parser("starflow_mlx.generate", "Generate images with STARFlow (MLX).")
    mx.reset_peak_memory()
    backend = generate_cli.Backend(
        load=load_pipeline,
        load_video=load_video_pipeline,
        peak_memory=mx.get_peak_memory,
        precision=precision,
        memory=available_memory,
        quantization=True,
    )
    return generate_cli.main(argv, parser, backend)


if __name__ == "__main__":
    sys.exit(main())
