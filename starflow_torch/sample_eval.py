"""Sample sets for evaluation (FID and friends) with PyTorch: N samples in resumable shards,
data-parallel under torchrun (rank r makes shards r, r + W, ...; one GPU per rank).

    torchrun --nproc_per_node 8 -m starflow_torch.sample_eval --model my-imagenet-256 -o samples/in256
    python -m starflow_torch.sample_eval --model starflow-digits-demo -n 1000 -o samples/digits

See starflow_core.evaluation.sample_cli (the options) and sample_sets (the folder layout).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from starflow_core.evaluation import sample_cli
from starflow_core.generation.cli import Backend
from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import physical_memory
from starflow_core.sources.pipeline_folder import PipelineParts

from .generate import check_dtype_on_device, choose_device, distributed_rank, peak_memory, run_precision


def main(argv: Sequence[str] | None = None) -> int:
    parser = sample_cli.build_parser(
        "starflow_torch.sample_eval", "Sample sets for evaluation (PyTorch).", torch=True
    )
    rank, world_size, local_rank = distributed_rank()

    def precision(args: argparse.Namespace) -> Precision:
        return run_precision(args, local_rank)

    def load_pipeline(parts: PipelineParts, args: argparse.Namespace):
        from .pipeline import StarFlowPipeline

        device = choose_device(args.device, local_rank)
        check_dtype_on_device(args.dtype, device)
        return StarFlowPipeline.from_pretrained(
            parts, dtype=precision(args).dtype, device=device, strict=args.strict
        )

    backend = Backend(
        load=load_pipeline,
        peak_memory=peak_memory,
        precision=precision,
        memory=lambda args: (physical_memory(), "physical memory"),
        rank=rank,
        world_size=world_size,
    )
    return sample_cli.main(argv, parser, backend, "torch")


if __name__ == "__main__":
    sys.exit(main())
