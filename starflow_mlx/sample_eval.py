"""Sample sets for evaluation (FID and friends) with MLX: N samples in resumable shards.

    python -m starflow_mlx.sample_eval --model starflow-digits-demo -n 1000 -o samples/digits

See starflow_core.evaluation.sample_cli (the options) and sample_sets (the folder layout).
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import sys
from collections.abc import Sequence

import mlx.core as mx

from starflow_core.evaluation import sample_cli
from starflow_core.generation.cli import Backend
from starflow_core.sources.pipeline_folder import PipelineParts

from .generate import available_memory, precision
from .pipeline import StarFlowPipeline


def load_pipeline(parts: PipelineParts, args: argparse.Namespace) -> StarFlowPipeline:
    chosen = precision(args)
    return StarFlowPipeline.from_pretrained(
        parts,
        dtype=chosen.dtype,
        quantize=chosen.quantize,
        text_quantize=chosen.text_quantize,
        strict=args.strict,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = sample_cli.build_parser("starflow_mlx.sample_eval", "Sample sets for evaluation (MLX).")
    backend = Backend(
        load=load_pipeline,
        peak_memory=mx.get_peak_memory,
        precision=precision,
        memory=available_memory,
        quantization=True,
    )
    return sample_cli.main(argv, parser, backend, "mlx")


if __name__ == "__main__":
    sys.exit(main())
