"""Ratios between the timed modes, the printed table, and bench.json + bench.png."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.io import atomic_path, atomic_write_text

from .measure import load_average
from .settings import MODES, OFFICIAL_SAMPLER_SECONDS, SWEEP_TOLERANCES, BenchSettings


def speedups(rows: dict[str, dict], preset_name: str) -> dict[str, float | None]:
    """How many times faster one mode is than another (None when a mode was not timed)."""

    def ratio(slow: str, fast: str) -> float | None:
        if slow in rows and fast in rows:
            return rows[slow]["seconds"] / rows[fast]["seconds"]
        return None

    out = {
        "mlx jacobi vs mlx sequential": ratio("mlx sequential", "mlx jacobi"),
        "torch jacobi vs torch sequential": ratio("torch sequential", "torch jacobi"),
        "mlx sequential vs torch sequential": ratio("torch sequential", "mlx sequential"),
        "mlx jacobi vs torch jacobi": ratio("torch jacobi", "mlx jacobi"),
    }
    reference = OFFICIAL_SAMPLER_SECONDS.get(preset_name)
    if reference is not None:
        out["official_sampler_reference_seconds"] = reference
        for mode in ("mlx sequential", "mlx jacobi"):
            if mode in rows:
                out[f"{mode} vs official reference"] = reference / rows[mode]["seconds"]
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"== {result['preset']} ==  {result['gflop_per_pass']['linear']:.1f} GFLOP per pass (linears)"]
    header = f"{'mode':18s} {'s/batch':>8s} {'tok/s':>8s} {'iters':>6s} {'GFLOP/s':>8s} {'roofline':>8s}"
    lines += [header + f" {'rms dev':>9s} {'peak GB':>8s}"]
    for mode, row in result["modes"].items():
        iterations = row["jacobi_iterations"]
        deviation = row.get("rms_deviation_from_sequential")
        peak = row["peak_memory_gb"]
        lines.append(
            f"{mode:18s} {row['seconds']:8.3f} {row['tokens_per_second']:8.1f} "
            f"{sum(map(sum, iterations)) if iterations else '-':>6} {row['achieved_gflops']:8.1f} "
            f"{row['roofline_fraction']:8.1%} {'-' if deviation is None else f'{deviation:.2e}':>9s} "
            f"{'-' if peak is None else f'{peak:.3f}':>8s}"
        )
    for name, value in result.get("speedups", {}).items():
        if value is not None:
            unit = "s" if name.endswith("seconds") else ("" if "deviation" in name else "x")
            lines.append(f"  {name}: {value:.3g}{unit}")
    if result["jacobi_sweep"]:
        lines.append("  Jacobi sweep (MLX): block  tol      seconds  iterations  rms dev")
        for entry in result["jacobi_sweep"]:
            lines.append(
                f"  {entry['block_size']:>24d}  {entry['tol']:<7.0e} {entry['seconds']:8.3f}  "
                f"{entry['total_iterations']:>10d}  {entry['rms_deviation_from_sequential']:.2e}"
            )
    for entry in result["quantization"]:
        line = (
            f"  {entry['bits']}-bit (group {entry['group_size']}): bits/dim {entry['bits_per_dim']:.5f} "
            f"(full {entry['full_bits_per_dim']:.5f}, delta {entry['bits_per_dim_delta']:+.2e})"
        )
        if "sample_max_abs_deviation" in entry:
            line += (
                f", Jacobi sample max |dev| {entry['sample_max_abs_deviation']:.2e}"
                f" (rel. rms {entry['sample_rms_deviation']:.2e})"
            )
        lines.append(line)
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Seconds per mode and preset, and the last swept preset's Jacobi sweep; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:  # a convenience: bench.json has the numbers
        return False
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    swept = [r for r in results if r["jacobi_sweep"]]
    figure, axes = plt.subplots(1, 1 + bool(swept), figsize=(12, 4.5))
    axes = np.atleast_1d(axes)
    width = 0.8 / len(results)
    for k, result in enumerate(results):
        modes = list(result["modes"])
        axes[0].bar(
            np.array([MODES.index(m) for m in modes]) + k * width,  # modes not run leave a gap
            [result["modes"][m]["seconds"] for m in modes],
            width,
            label=result["preset"],
        )
    axes[0].set_xticks(np.arange(len(MODES)) + 0.4 - width / 2, MODES, rotation=15)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds per batch")
    axes[0].legend()
    if swept:  # the last (largest) preset's sweep
        result = swept[-1]
        for tol in SWEEP_TOLERANCES:
            entries = [e for e in result["jacobi_sweep"] if e["tol"] == tol]
            axes[1].plot(
                [e["block_size"] for e in entries],
                [e["seconds"] for e in entries],
                "o-",
                label=f"tol {tol:g}",
            )
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("Jacobi block size")
        axes[1].set_ylabel("seconds per batch (MLX)")
        axes[1].set_title(f"{result['preset']}: MLX Jacobi sweep")
        axes[1].legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    return True


def write_report(out: Path, machine: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """<out>/bench.json (machine and results) and <out>/bench.png."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "bench.json", json.dumps({"machine": machine, "results": results}, indent=2) + "\n"
    )
    plot(results, out / "bench.png")


def benchmark_presets(
    presets: Sequence[str],
    settings: BenchSettings,
    out: Path,
    run_preset: Callable[[BenchSettings, float], tuple[dict[str, Any], dict[str, np.ndarray]]],
    machine: dict[str, Any],
    save_samples: bool,
) -> list[dict[str, Any]]:
    """Each twin's bench: run_preset(settings, GEMM GFLOP/s) per preset, its table printed, then
    <out>/bench.json and bench.png; save_samples also writes <out>/samples_<preset>.npz (one NCHW
    array per mode), for comparing twins. `machine` is the twin's machine_info."""
    gemm_gflops = machine["gemm_gflops_fp32_1024"]
    results = []
    for name in presets:
        result, samples = run_preset(dataclasses.replace(settings, preset=name), gemm_gflops)
        print(format_table(result), flush=True)
        results.append(result)
        if save_samples:
            out.mkdir(parents=True, exist_ok=True)
            np.savez(out / f"samples_{name}.npz", **samples)
    machine["load_average_after"] = load_average()
    write_report(out, machine, results)
    print(
        f"GEMM roofline {gemm_gflops:.1f} GFLOP/s ({machine['framework']} fp32 1024^2, "
        f"{settings.threads} thread(s)); wrote {out}"
    )
    return results
