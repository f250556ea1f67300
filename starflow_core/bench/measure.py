"""Timing and the cost model of sequential and Jacobi sampling, shared by both twins' bench commands.

A twin hands `time_modes` one zero-argument sampler per mode; each returns (sample as NCHW
numpy, SamplingStats, peak bytes or None). The cost model counts the FLOPs of the
transformer linears (what a sampling step spends its time on) and the weight bytes a
sequential step reads, so a row can say what fraction of the machine's GEMM rate it reaches.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from starflow_core.config import FlowConfig

from .settings import BenchSettings

Sampler = Callable[[], tuple[np.ndarray, Any, int | None]]


# ----- cost model --------------------------------------------------------------------------
def block_rows(config: FlowConfig, index: int, batch: int, guidance: float) -> int:
    """Rows a block runs on: guidance doubles the batch of the conditioned blocks."""
    return 2 * batch if (guidance > 0 and config.block_has_text(index)) else batch


def linear_flops_per_token(config: FlowConfig) -> float:
    """Multiply-adds x 2 of one layer's linears for one token: qkv, proj, mlp (4 + 2 e) C^2."""
    return 2.0 * (4 + 2 * config.expansion) * config.channels**2


def flops_per_pass(config: FlowConfig, batch: int, guidance: float) -> dict[str, float]:
    """FLOPs of one full pass over all tokens of every block (linears; attention separately)."""
    tokens = config.grid_size**2
    linear = attention = 0.0
    for i, layers in enumerate(config.layers_per_block):
        rows = block_rows(config, i, batch, guidance)
        context = (config.txt_size if config.block_has_text(i) else 0) + tokens / 2  # mean keys seen
        linear += rows * layers * tokens * linear_flops_per_token(config)
        attention += rows * layers * tokens * 4.0 * config.channels * context
    return {"linear": linear, "attention": attention}


def weight_bytes_per_token(config: FlowConfig, bytes_per_weight: int) -> float:
    """Transformer weight bytes one token's step reads across all blocks (sequential floor)."""
    layers = sum(config.layers_per_block)
    return layers * (4 + 2 * config.expansion) * config.channels**2 * bytes_per_weight


def executed_linear_flops(
    config: FlowConfig,
    batch: int,
    guidance: float,
    jacobi_iterations: list[list[int]] | None,
    block_size: int,
) -> float:
    """Linear FLOPs actually run: a pass per block for sequential, iterations x chunk for Jacobi."""
    tokens = config.grid_size**2
    total = 0.0
    active = [i for i, n in enumerate(config.layers_per_block) if n > 0][::-1]  # deep block first
    for k, i in enumerate(active):
        evaluated = tokens
        if jacobi_iterations:
            iterations = jacobi_iterations[k]
            chunks = [min(block_size, tokens - c * block_size) for c in range(len(iterations))]
            evaluated = sum(n * length for n, length in zip(iterations, chunks, strict=True))
        rows = block_rows(config, i, batch, guidance)
        total += rows * config.layers_per_block[i] * evaluated * linear_flops_per_token(config)
    return total


# ----- timing ------------------------------------------------------------------------------
def timed(run: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Warm up once (compilation, caches), then time `repeats` calls; (seconds per call, last output)."""
    output = run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = run()
        seconds.append(time.perf_counter() - start)
    return seconds, output


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt(mean((a - b)^2)) / sqrt(mean(b^2))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b**2)), 1e-30))


def time_modes(
    runners: dict[str, Sampler], config: FlowConfig, settings: BenchSettings, gemm_gflops: float
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Time each mode (median of settings.repeats after a warm-up): (rows by mode, samples by mode)."""
    tokens_per_batch = settings.batch * config.grid_size**2
    rows, samples = {}, {}
    for mode, run in runners.items():
        seconds, (sample, stats, peak) = timed(run, settings.repeats)
        median = float(np.median(seconds))
        jacobi = mode.endswith("jacobi")
        iterations = stats.jacobi_iterations if jacobi else None
        executed = executed_linear_flops(
            config, settings.batch, settings.guidance, iterations, settings.block_size
        )
        samples[mode] = sample
        rows[mode] = {
            "seconds": median,
            "seconds_all": seconds,
            "tokens_per_second": tokens_per_batch / median,
            "jacobi_iterations": iterations,
            "network_steps": stats.steps,
            "executed_gflop": executed / 1e9,
            "achieved_gflops": executed / median / 1e9,
            "roofline_fraction": executed / median / 1e9 / gemm_gflops,
            "peak_memory_gb": None if peak is None else peak / 1e9,
        }
        if jacobi and mode.replace("jacobi", "sequential") in samples:
            rows[mode]["rms_deviation_from_sequential"] = relative_rms(
                sample, samples[mode.replace("jacobi", "sequential")]
            )
    return rows, samples


def preset_result(config: FlowConfig, settings: BenchSettings, rows: dict[str, dict]) -> dict[str, Any]:
    """The JSON-ready result of one preset (the twin adds its sweep and quantization report)."""
    bytes_per_weight = 2 if settings.dtype == "bfloat16" else 4
    flops = flops_per_pass(config, settings.batch, settings.guidance)
    return {
        "preset": settings.preset,
        "settings": dataclasses.asdict(settings),
        "config": config.to_dict(),
        "gflop_per_pass": {name: value / 1e9 for name, value in flops.items()},
        "sequential_weight_traffic_gb": weight_bytes_per_token(config, bytes_per_weight)
        * config.grid_size**2
        / 1e9,
        "modes": rows,
        "jacobi_sweep": [],
        "quantization": [],
    }


# ----- the machine -------------------------------------------------------------------------
def system_openblas_mapped() -> list[str]:
    """Files named libopenblas* mapped into this process (Linux; [] elsewhere).

    The system OpenBLAS that MLX's command lines load globally; numpy's own copy is named
    libscipy_openblas* and does not count. A torch timing is only valid when this is empty.
    """
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    except OSError:
        return []
    return sorted(path for path in paths if os.path.basename(path).startswith("libopenblas"))


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was (it may be shared)."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_info(
    framework: str, version: str, threads: int, gemm_gflops: float, **extra: Any
) -> dict[str, Any]:
    """Where and how a twin was timed: platform, load, threads, library versions, GEMM rate."""
    return {
        "framework": framework,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "threads": threads,
        framework: version,
        "gemm_gflops_fp32_1024": gemm_gflops,
        "system_openblas_mapped": system_openblas_mapped(),
        **extra,
    }
