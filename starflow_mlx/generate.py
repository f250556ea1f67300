"""Generate images with STARFlow in MLX.

    python -m starflow_mlx.generate "a film still of a cat playing piano" \
        --model starflow-3b-t2i-256 --seed 0 1 --cfg 3.6 --jacobi --output cat.png

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
from starflow_core.sources.pipeline_folder import PipelineParts

from .pipeline import StarFlowPipeline

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def load_pipeline(parts: PipelineParts, args: argparse.Namespace) -> StarFlowPipeline:
    return StarFlowPipeline.from_pretrained(
        parts, dtype=DTYPES[args.dtype], decoder=args.decoder, quantize=args.quantize
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = generate_cli.build_parser("starflow-generate", "Generate images with STARFlow (MLX).")
    mx.reset_peak_memory()
    backend = generate_cli.Backend(load=load_pipeline, peak_memory=mx.get_peak_memory)
    return generate_cli.main(argv, parser, backend)


if __name__ == "__main__":
    sys.exit(main())
