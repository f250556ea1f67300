"""Sampling benchmark of the MLX twin: sequential and Jacobi on random or trained weights.

    python -m starflow_mlx.bench                       # presets tiny and bench-small
    python -m starflow_mlx.bench --preset bench-small --threads 2 --repeats 5 --out bench_results/
    python -m starflow_mlx.bench --weights starflow_core/assets/demo --batch 40 --guidance 1   # a trained model
    python -m starflow_mlx.bench --preset starflow-3b-t2i-256 --dtype bfloat16 --repeats 1 --no-sweep --no-quantization

Random weights come from starflow_core.bench.weights (numpy; the torch twin's bench builds the
same folder from the same seed). Each mode runs once to warm up (compilation) and then
--repeats times; medians are reported, with a Jacobi block-size x tolerance sweep and the
bits/dim change of 8- and 4-bit quantization. Results: <out>/bench.json and bench.png.
The twin of starflow_torch/bench.py; benchmarks/sampling.py runs both, each in its own
process, and compares them.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import argparse
import ctypes
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from starflow_core.bench.measure import (
    machine_info,
    preset_result,
    relative_rms,
    time_modes,
    timed,
)
from starflow_core.bench.report import benchmark_presets, speedups
from starflow_core.bench.settings import (
    QUANTIZATION_BITS,
    QUANTIZATION_GROUP_SIZE,
    QUANTIZED_SAMPLE_MAX_TOKENS,
    SWEEP_BLOCK_SIZES,
    SWEEP_TOLERANCES,
    BenchSettings,
    add_arguments,
    bench_config,
    make_inputs,
    settings_from_arguments,
)
from starflow_core.bench.weights import model_folder

from .blas import blas_status, measure_gemm_gflops
from .model import StarFlow
from .sampling import SamplingStats

FRAMEWORK = "mlx"


def set_threads(threads: int) -> None:
    """Threads of the BLAS MLX runs its matmuls on (the system OpenBLAS; MLX's own CPU ops run on one)."""
    library = blas_status().get("library")
    if library:
        handle = ctypes.CDLL(library)
        if hasattr(handle, "openblas_set_num_threads"):
            handle.openblas_set_num_threads(threads)


def sampler(model: StarFlow, inputs: dict, settings: BenchSettings, jacobi: bool, **jacobi_args):
    """A zero-argument function sampling with MLX; returns (NCHW numpy sample, stats, peak bytes)."""
    noise = mx.array(inputs["noise"].transpose(0, 2, 3, 1))  # (B, H, W, C)
    y = None
    if "y" in inputs:
        y = mx.array(inputs["y"].astype(np.int32) if inputs["y"].dtype.kind == "i" else inputs["y"])
    y_null = mx.array(inputs["y_null"]) if "y_null" in inputs else None

    def run():
        stats = SamplingStats()
        mx.reset_peak_memory()
        sample = model.sample(noise, y, y_null, settings.guidance, jacobi=jacobi, stats=stats, **jacobi_args)
        mx.eval(sample)
        return np.array(sample.astype(mx.float32)).transpose(0, 3, 1, 2), stats, mx.get_peak_memory()

    return run


def run_preset(settings: BenchSettings, gemm_gflops: float) -> tuple[dict, dict[str, np.ndarray]]:
    """Time MLX sequential and Jacobi (and the sweep, quantization) on one preset: (result, samples)."""
    config = bench_config(settings)
    inputs = make_inputs(config, settings.batch, settings.seed)
    jacobi_args = dict(block_size=settings.block_size, tol=settings.tol, max_iter=settings.max_iter)
    with model_folder(settings) as folder:
        # the requested dtype, whatever the folder stores (trained weights ship in fp16)
        model = StarFlow.from_pretrained(folder, dtype=getattr(mx, settings.dtype))
        runners = {"mlx sequential": sampler(model, inputs, settings, False)}
        if settings.jacobi:
            runners["mlx jacobi"] = sampler(model, inputs, settings, True, **jacobi_args)
        rows, samples = time_modes(runners, config, settings, gemm_gflops)
        result = preset_result(config, settings, rows)
        if settings.jacobi and settings.sweep:
            result["jacobi_sweep"] = jacobi_sweep(model, inputs, settings, samples["mlx sequential"])
        if settings.jacobi and settings.quantization:
            result["quantization"] = quantization_report(
                folder, model, inputs, settings, samples["mlx jacobi"]
            )
    result["speedups"] = speedups(rows, settings.preset)
    return result, samples


def jacobi_sweep(model: StarFlow, inputs: dict, settings: BenchSettings, sequential: np.ndarray) -> list:
    """Jacobi over block sizes x tolerances: seconds (one timed run), iterations, deviation."""
    results = []
    for block_size in SWEEP_BLOCK_SIZES:
        for tol in SWEEP_TOLERANCES:
            run = sampler(
                model, inputs, settings, True, block_size=block_size, tol=tol, max_iter=settings.max_iter
            )
            seconds, (sample, stats, _) = timed(run, 1)
            results.append(
                {
                    "block_size": block_size,
                    "tol": tol,
                    "seconds": seconds[0],
                    "total_iterations": stats.total_iterations,
                    "rms_deviation_from_sequential": relative_rms(sample, sequential),
                }
            )
    return results


def quantization_report(
    folder: Path, full: StarFlow, inputs: dict, settings: BenchSettings, full_sample: np.ndarray
) -> list[dict]:
    """Bits/dim on random data (x ~ N(0, 1)) and sample deviation of 8- and 4-bit models vs full."""
    config = full.config
    rng = np.random.default_rng(settings.seed + 1)
    data = mx.array(rng.standard_normal(inputs["noise"].transpose(0, 2, 3, 1).shape, dtype=np.float32))
    y = mx.array(inputs["y"]) if "y" in inputs else None
    full_bpd = float(mx.mean(full.bits_per_dim(data, y)).item())
    draw_samples = config.grid_size**2 <= QUANTIZED_SAMPLE_MAX_TOKENS
    jacobi_args = dict(block_size=settings.block_size, tol=settings.tol, max_iter=settings.max_iter)
    report = []
    for bits in QUANTIZATION_BITS:
        model = StarFlow.from_pretrained(folder, dtype=mx.float32).quantize(bits, QUANTIZATION_GROUP_SIZE)
        bpd = float(mx.mean(model.bits_per_dim(data, y)).item())
        entry = {"bits": bits, "group_size": QUANTIZATION_GROUP_SIZE, "bits_per_dim": bpd}
        entry.update(full_bits_per_dim=full_bpd, bits_per_dim_delta=bpd - full_bpd)
        if draw_samples:
            sample, _, _ = sampler(model, inputs, settings, True, **jacobi_args)()
            entry["sample_max_abs_deviation"] = float(np.abs(sample - full_sample).max())
            entry["sample_rms_deviation"] = relative_rms(sample, full_sample)
        report.append(entry)
    return report


def run_benchmark(
    presets: Sequence[str], settings: BenchSettings, out: Path, save_samples: bool = False
) -> list[dict]:
    """Benchmark every preset, print the tables, write <out>/bench.json and bench.png.

    save_samples: also <out>/samples_<preset>.npz (one NCHW array per mode), for comparing twins.
    """
    set_threads(settings.threads)
    machine = machine_info(
        FRAMEWORK, mx.__version__, settings.threads, measure_gemm_gflops(), blas=blas_status()
    )
    return benchmark_presets(presets, settings, out, run_preset, machine, save_samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m starflow_mlx.bench",
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
