"""Compare the twins' sampling speed: MLX and torch, sequential and Jacobi, same weights and noise.

    python benchmarks/sampling.py                              # presets tiny and bench-small
    python benchmarks/sampling.py --preset bench-small --threads 2 --out docs/
    python benchmarks/sampling.py --weights starflow_core/assets/demo --batch 40 --guidance 1
    python benchmarks/sampling.py --preset tiny --no-torch     # one twin only

Builds each preset's random weights once (numpy, starflow_core.bench.weights), then runs
`python -m starflow_mlx.bench` and `python -m starflow_torch.bench` on that folder, one after
the other, each in a process of its own: the MLX command loads the system OpenBLAS process-wide,
which would change torch's results and speed in the same process (docs/blas.md). Combines
their results into <out>/bench.json and <out>/bench.png: seconds, tokens/s, the ratios between
modes, the Jacobi samples' deviation from sequential, the MLX-torch sample deviation, the
fraction of the machine's fp32 GEMM rate reached (the faster twin's 1024^2 GEMM), the MLX
Jacobi sweep and the MLX quantization report. Options as the twins' bench commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from starflow_core.bench.measure import load_average, relative_rms
from starflow_core.bench.report import format_table, speedups, write_report
from starflow_core.bench.settings import (
    BenchSettings,
    add_arguments,
    bench_config,
    settings_from_arguments,
    settings_to_arguments,
    trained_folder,
)
from starflow_core.bench.weights import build_random_folder

TWINS = ("mlx", "torch")


def run_twin(twin: str, folder: Path, settings: BenchSettings, out: Path) -> tuple[dict, dict, dict]:
    """Run one twin's bench on `folder` in a new process: (its result, its machine info, its samples)."""
    arguments = settings_to_arguments(dataclasses.replace(settings, weights=str(folder)))
    command = [sys.executable, "-m", f"starflow_{twin}.bench", *arguments, f"--out={out}", "--save-samples"]
    print(f"$ {' '.join(command)}", flush=True)
    completed = subprocess.run(command)
    if completed.returncode != 0:
        raise SystemExit(
            f"benchmarks/sampling.py: the {twin} bench failed (exit code {completed.returncode})"
        )
    report = json.loads((out / "bench.json").read_text())
    with np.load(out / f"samples_{folder.name}.npz") as samples:
        return report["results"][0], report["machine"], dict(samples)


def combine(
    name: str, settings: BenchSettings, runs: dict[str, tuple[dict, dict, dict]], roofline: float
) -> dict:
    """One preset's result from the twins' results: all modes, ratios, the twins' sample deviation."""
    results = {twin: run[0] for twin, run in runs.items()}
    result = dict(results.get("mlx") or results["torch"])
    result.update(preset=name, settings=dataclasses.asdict(dataclasses.replace(settings, preset=name)))
    modes = {}
    for twin_result in results.values():
        modes.update(twin_result["modes"])
    for row in modes.values():  # one roofline for both twins: the machine's best GEMM rate
        row["roofline_fraction"] = row["achieved_gflops"] / roofline
    result["modes"] = modes
    result["speedups"] = speedups(modes, name)
    if set(runs) == set(TWINS):
        mlx_sample, torch_sample = runs["mlx"][2]["mlx sequential"], runs["torch"][2]["torch sequential"]
        result["speedups"]["mlx_vs_torch_sample_rms_deviation"] = relative_rms(mlx_sample, torch_sample)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/sampling.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("--no-torch", action="store_true", help="time the MLX twin only")
    parser.add_argument("--no-mlx", action="store_true", help="time the torch twin only")
    args = parser.parse_args(argv)
    settings, presets = settings_from_arguments(parser, args)
    twins = [twin for twin in TWINS if not getattr(args, f"no_{twin}")]
    if not twins:
        parser.error("--no-torch and --no-mlx leave nothing to time")
    load_before = load_average()
    results, machines = [], {}
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        for name in presets:
            if settings.weights:
                folder = trained_folder(settings.weights)
            else:  # the shared random weights, built once for both twins
                named = dataclasses.replace(settings, preset=name)
                folder = build_random_folder(bench_config(named), root / "weights" / name, named)
            runs = {twin: run_twin(twin, folder, settings, root / twin / name) for twin in twins}
            machines.update({twin: run[1] for twin, run in runs.items()})
            roofline = max(machine["gemm_gflops_fp32_1024"] for machine in machines.values())
            results.append(combine(name, settings, runs, roofline))
    machine = {
        "roofline_gflops_fp32_1024": max(m["gemm_gflops_fp32_1024"] for m in machines.values()),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        **machines,
    }
    write_report(args.out, machine, results)
    for result in results:
        print(format_table(result))
    print(
        f"roofline {machine['roofline_gflops_fp32_1024']:.1f} GFLOP/s; wrote {args.out}/bench.json, bench.png"
    )


if __name__ == "__main__":
    main()
