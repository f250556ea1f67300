"""Generate images with STARFlow in PyTorch (CUDA when available, else CPU).

    python -m starflow_torch.generate "a film still of a cat playing piano" \
        --model starflow-3b-t2i-256 --seed 0 1 --cfg 3.6 --jacobi --output cat.png

Under torchrun the prompt x seed jobs are split round-robin across ranks (data-parallel
sampling for large sample sets, e.g. FID); each rank writes its own files, named by the
job's global index, so nothing collides and no gather is needed:

    torchrun --nproc_per_node 8 -m starflow_torch.sample --prompt-file captions.txt \
        --model starflow-3b-t2i-256 --seed 0 --output samples/
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Sequence

import torch

from starflow_core.generation import cli as generate_cli
from starflow_core.sources.pipeline_folder import PipelineParts

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def choose_device(requested: str | None, local_rank: int) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def peak_memory() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(argv: Sequence[str] | None = None) -> int:
    parser = generate_cli.build_parser(
        "starflow-torch-generate", "Generate images with STARFlow (PyTorch).", torch=True
    )
    rank, world_size, local_rank = distributed_rank()

    def load_pipeline(parts: PipelineParts, args: argparse.Namespace):
        from .pipeline import StarFlowPipeline  # diffusers and transformers: seconds, so not for --help

        device = choose_device(args.device, local_rank)
        return StarFlowPipeline.from_pretrained(
            parts, dtype=DTYPES[args.dtype], decoder=args.decoder, device=device
        )

    backend = generate_cli.Backend(
        load=load_pipeline,
        peak_memory=peak_memory,
        rank=rank,
        world_size=world_size,
    )
    return generate_cli.main(argv, parser, backend)


if __name__ == "__main__":
    sys.exit(main())
