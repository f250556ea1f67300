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
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starflow_core.generation import cli as generate_cli
from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import cpu_threads, machine_cpus, physical_memory
from starflow_core.sources.pipeline_folder import PipelineParts

if TYPE_CHECKING:
    import torch


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) without it."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def choose_device(requested: str | None, local_rank: int) -> torch.device:
    """The --device asked for (checked: it exists on this machine), or CUDA when available."""
    import torch

    if not requested:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown --device {requested!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {requested}: {why}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {requested}: only cpu, cuda[:N] and mps are supported")
    return device


def check_dtype_on_device(dtype: str, device: torch.device) -> None:
    """Half precision fails on CPU in the torch twin (its CPU layer norm needs float32 weights)."""
    if device.type == "cpu" and dtype in ("float16", "bfloat16"):
        raise ValueError(f"--dtype {dtype} does not run on CPU in the torch twin; use --dtype float32 on CPU")


def use_cpu_threads(requested: int | None) -> None:
    """On a CPU, sample with the idle cores (or --threads / OMP_NUM_THREADS), not one thread per
    core whatever else runs (starflow_core.generation.resources.cpu_threads)."""
    import torch

    threads = cpu_threads(requested, os.environ, *machine_cpus())
    if threads is not None:
        torch.set_num_threads(threads)


def peak_memory() -> int | None:
    """Bytes CUDA tensors held at most; None on a CPU (the summary gives the process's peak)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return None


def run_precision(args: argparse.Namespace, local_rank: int) -> Precision:
    """The dtype a run computes in (--dtype on the device it runs on), for every torch command."""
    from .pipeline import auto_dtype  # diffusers and transformers: seconds, so not for --help

    return Precision(auto_dtype(args.dtype, choose_device(args.device, local_rank)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = generate_cli.build_parser(
        "starflow_torch.generate", "Generate images with STARFlow (PyTorch).", torch=True
    )
    rank, world_size, local_rank = distributed_rank()

    def precision(args: argparse.Namespace) -> Precision:
        return run_precision(args, local_rank)

    def load_pipeline(parts: PipelineParts, args: argparse.Namespace):
        from .pipeline import StarFlowPipeline

        device = choose_device(args.device, local_rank)
        check_dtype_on_device(args.dtype, device)
        if device.type == "cpu":
            use_cpu_threads(args.threads)
        return StarFlowPipeline.from_pretrained(
            parts, dtype=precision(args).dtype, decoder=args.decoder, device=device, strict=args.strict
        )

    def load_video_pipeline(parts: PipelineParts, args: argparse.Namespace):
        from .video_pipeline import StarFlowVideoPipeline

        device = choose_device(args.device, local_rank)
        check_dtype_on_device(args.dtype, device)
        return StarFlowVideoPipeline.from_pretrained(
            parts, dtype=precision(args).dtype, device=device, strict=args.strict
        )

    def available_memory(args: argparse.Namespace) -> tuple[int, str]:
        import torch

        device = choose_device(args.device, local_rank)
        if device.type == "cuda":
            return torch.cuda.get_device_properties(
                device
            ).total_memory, f"{torch.cuda.get_device_name(device)}"
        return physical_memory(), "physical memory"

    backend = generate_cli.Backend(
        load=load_pipeline,
        load_video=load_video_pipeline,
        peak_memory=peak_memory,
        arrays_name="CUDA tensors",
        precision=precision,
        memory=available_memory,
        rank=rank,
        world_size=world_size,
    )
    return generate_cli.main(argv, parser, backend)


if __name__ == "__main__":
    sys.exit(main())
