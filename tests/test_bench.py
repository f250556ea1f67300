"""The sampling benchmark: each twin's `bench` command, and benchmarks/sampling.py, which runs both
twins on the same random weights, each in a process of its own, and compares them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.waiting import HANG_GUARD_S

from starflow_core.bench.settings import (
    BenchSettings,
    add_arguments,
    settings_from_arguments,
    settings_to_arguments,
)

REPO = Path(__file__).resolve().parents[1]


def test_mlx_bench_writes_json_png_and_samples(tmp_path):
    from starflow_mlx.bench import main

    # the sweep and the quantization report run in the driver's test (on OpenBLAS, faster)
    arguments = ["--preset", "tiny", "--repeats", "1", "--no-sweep", "--no-quantization"]
    main([*arguments, "--out", str(tmp_path), "--save-samples"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert report["machine"]["framework"] == "mlx" and report["machine"]["gemm_gflops_fp32_1024"] > 0
    result = report["results"][0]
    assert result["preset"] == "tiny" and set(result["modes"]) == {"mlx sequential", "mlx jacobi"}
    assert result["modes"]["mlx jacobi"]["rms_deviation_from_sequential"] < 1e-1  # tol 1e-3 stops early
    with np.load(tmp_path / "samples_tiny.npz") as samples:
        assert set(samples) == {"mlx sequential", "mlx jacobi"} and samples["mlx sequential"].shape == (
            2,
            4,
            8,
            8,
        )


def test_torch_bench_writes_json_in_a_process_without_system_openblas(tmp_path):
    from starflow_torch.bench import main

    main(["--preset", "tiny", "--repeats", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["framework"] == "torch" and report["machine"]["gemm_gflops_fp32_1024"] > 0
    assert report["machine"]["system_openblas_mapped"] == []  # the suite never loads it (conftest.py)
    result = report["results"][0]
    assert set(result["modes"]) == {"torch sequential", "torch jacobi"}
    assert result["jacobi_sweep"] == [] and result["quantization"] == []  # MLX-only reports


def test_driver_times_each_twin_in_its_own_process(tmp_path):
    command = [
        sys.executable,
        "benchmarks/sampling.py",
        "--preset",
        "tiny",
        "--repeats",
        "1",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    machine = report["machine"]
    assert machine["torch"]["system_openblas_mapped"] == []  # torch never shares a process with it
    assert bool(machine["mlx"]["system_openblas_mapped"]) == machine["mlx"]["blas"]["loaded"]
    roofline = machine["roofline_gflops_fp32_1024"]
    assert roofline == max(machine[twin]["gemm_gflops_fp32_1024"] for twin in ("mlx", "torch"))
    tiny = report["results"][0]
    assert list(tiny["modes"]) == ["mlx sequential", "mlx jacobi", "torch sequential", "torch jacobi"]
    for row in tiny["modes"].values():
        assert row["roofline_fraction"] == pytest.approx(row["achieved_gflops"] / roofline)
    assert all(value is not None for value in tiny["speedups"].values())
    # the same weights and noise in both twins: fp32 rounding apart (measured ~2e-7)
    assert tiny["speedups"]["mlx_vs_torch_sample_rms_deviation"] < 1e-4
    assert len(tiny["jacobi_sweep"]) == 16  # 4 block sizes x 4 tolerances, MLX
    assert [entry["bits"] for entry in tiny["quantization"]] == [8, 4]


def parse(arguments: list[str]) -> tuple[BenchSettings, list[str]]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_arguments(parser, parser.parse_args(arguments))


def test_the_driver_passes_every_setting_to_the_twins(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    changed = BenchSettings(
        preset="tiny", batch=3, guidance=1.5, block_size=8, tol=1e-4, max_iter=7, repeats=2, seed=5,
        proj_out_std=0.1, dtype="bfloat16", threads=2, jacobi=False, sweep=False, quantization=False,
    )  # fmt: skip
    for settings in (
        changed,
        BenchSettings(preset="tiny"),
        dataclasses.replace(changed, weights=str(tmp_path)),
    ):
        parsed, presets = parse(settings_to_arguments(settings))
        expected = dataclasses.replace(settings, preset=tmp_path.name) if settings.weights else settings
        assert parsed == expected
        assert presets == ([tmp_path.name] if settings.weights else ["tiny"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--preset", "huge"], "unknown preset 'huge'"), (["--repeats", "0"], "--repeats must be >= 1")],
)
def test_bad_options_exit_2_with_one_line(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
