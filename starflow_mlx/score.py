"""Exact log-likelihood of images under a STARFlow model, in MLX.

    python -m starflow_mlx.score digit.png --label seven                     # the demo model
    python -m starflow_mlx.score photo.png --model starflow-3b-t2i-256 --prompt "a cat" --json

Bits per dimension and nats per image; see starflow_core.generation.scoring for what the
density is of (pixels, or VAE latents under the flow's noisy-latent model). All flags: --help.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import sys
from collections.abc import Sequence

from starflow_core.generation import score_cli
from starflow_core.generation.precision import Precision
from starflow_core.sources.pipeline_folder import PipelineParts

from .pipeline import StarFlowPipeline, auto_dtype


def precision(args: argparse.Namespace) -> Precision:
    return Precision(auto_dtype(args.dtype), args.quantize, args.quantize_text)


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
    parser = score_cli.build_parser("starflow_mlx.score", "Exact log-likelihood of images (MLX).")
    return score_cli.main(argv, parser, load_pipeline, precision)


if __name__ == "__main__":
    sys.exit(main())
