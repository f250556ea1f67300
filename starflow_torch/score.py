"""Exact log-likelihood of images under a STARFlow model, in PyTorch (CUDA when available).

    python -m starflow_torch.score digit.png --label seven                   # the demo model
    python -m starflow_torch.score photo.png --model starflow-3b-t2i-256 --prompt "a cat" --json

Bits per dimension and nats per image; see starflow_core.generation.scoring for what the
density is of (pixels, or VAE latents under the flow's noisy-latent model). All flags: --help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from starflow_core.generation import score_cli
from starflow_core.generation.precision import Precision
from starflow_core.sources.pipeline_folder import PipelineParts

from .generate import check_dtype_on_device, choose_device, run_precision, use_cpu_threads


def precision(args: argparse.Namespace) -> Precision:
    return run_precision(args, local_rank=0)


def load_pipeline(parts: PipelineParts, args: argparse.Namespace):
    from .pipeline import StarFlowPipeline

    device = choose_device(args.device, local_rank=0)
    check_dtype_on_device(args.dtype, device)
    if device.type == "cpu":
        use_cpu_threads(None)  # the idle cores (or OMP_NUM_THREADS), as generate
    return StarFlowPipeline.from_pretrained(
        parts, dtype=precision(args).dtype, device=device, strict=args.strict
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = score_cli.build_parser(
        "starflow_torch.score", "Exact log-likelihood of images (PyTorch).", torch=True
    )
    return score_cli.main(argv, parser, load_pipeline, precision)


if __name__ == "__main__":
    sys.exit(main())
