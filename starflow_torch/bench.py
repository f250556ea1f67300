"""Sampling benchmark of the PyTorch twin: sequential and Jacobi on random or trained weights.

    python -m starflow_torch.bench                     # presets tiny and bench-small
    python -m starflow_torch.bench --preset bench-small --threads 2 --repeats 5 --out bench_results/
    python -m starflow_torch.bench --weights starflow_core/assets/demo --batch 40 --guidance 1   # a trained model

The twin of starflow_mlx/bench.py: the same options, random weights (starflow_core.bench.weights,
the same folder from the same seed), inputs and report; the Jacobi sweep and the quantization
report are MLX-only. Run it in a process that has not loaded the system OpenBLAS globally (no
MLX command line, no starflow_mlx.use_system_blas()): that changes torch's results and speed.
benchmarks/sampling.py runs both twins, each in its own process, and compares them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from starflow_core.bench.measure import machine_info, preset_result, time_modes
from starflow_core.bench.report import benchmark_presets, speedups
from starflow_core.bench.settings import (
    BenchSettings,
    add_arguments,
    bench_config,
    make_inputs,
    settings_from_arguments,
)
from starflow_core.bench.weights import model_folder

from .model import StarFlow
from .sampling import SamplingStats

FRAMEWORK = "torch"


def set_threads(threads: int) -> None:
    """Threads of torch's intra-op pool (its BLAS and elementwise kernels)."""
    torch.set_num_threads(threads)


def measure_gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 (n, n) @ (n, n) speed in GFLOP/s after one warm-up (the roofline)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    a @ b
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def sampler(model: StarFlow, inputs: dict, settings: BenchSettings, jacobi: bool, **jacobi_args):
    """A zero-argument function sampling with torch; returns (NCHW numpy sample, stats, None)."""
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}

    def run():
        stats = SamplingStats()
        sample = model.sample(  # under torch.no_grad, as users call it
            tensors["noise"],
            tensors.get("y"),
            tensors.get("y_null"),
            settings.guidance,
            jacobi=jacobi,
            stats=stats,
            **jacobi_args,
        )
        return sample.float().numpy(), stats, None  # peak memory: not tracked on CPU

    return run


def run_preset(settings: BenchSettings, gemm_gflops: float) -> tuple[dict, dict[str, np.ndarray]]:
    """Time torch sequential and Jacobi on one preset: (result, samples)."""
    config = bench_config(settings)
    inputs = make_inputs(config, settings.batch, settings.seed)
    jacobi_args = dict(block_size=settings.block_size, tol=settings.tol, max_iter=settings.max_iter)
    with model_folder(settings) as folder:
        # the requested dtype, whatever the folder stores (trained weights ship in fp16)
        model = StarFlow.from_pretrained(folder, dtype=getattr(torch, settings.dtype))
    runners = {"torch sequential": sampler(model, inputs, settings, False)}
    if settings.jacobi:
        runners["torch jacobi"] = sampler(model, inputs, settings, True, **jacobi_args)
    rows, samples = time_modes(runners, config, settings, gemm_gflops)
    result = preset_result(config, settings, rows)
    result["speedups"] = speedups(rows, settings.preset)
    return result, samples


def run_benchmark(
    presets: Sequence[str], settings: BenchSettings, out: Path, save_samples: bool = False
) -> list[dict]:
    """Benchmark every preset, print the tables, write <out>/bench.json and bench.png.

    save_samples: also <out>/samples_<preset>.npz (one NCHW array per mode), for comparing twins.
    """
    set_threads(settings.threads)
    machine = machine_info(FRAMEWORK, torch.__version__, settings.threads, measure_gemm_gflops())
    return benchmark_presets(presets, settings, out, run_preset, machine, save_samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m starflow_torch.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("--save-samples", action="store_true", help="also write <out>/samples_<preset>.npz")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings, presets = settings_from_arguments(parser, args)
    run_benchmark(presets, settings, args.out, save_samples=args.save_samples)


if __name__ == "__main__":
    main()
