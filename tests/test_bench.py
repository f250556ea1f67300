"""Smoke test of `python -m starflow_mlx.bench` on the tiny preset."""

from __future__ import annotations

import json

from starflow_mlx.bench import MODES, BenchSettings, main, run_benchmark


def test_bench_writes_json_and_png(tmp_path):
    settings = BenchSettings(repeats=1, sweep=True, quantization=True)
    results = run_benchmark(["tiny"], settings, tmp_path)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert report["machine"]["blas"]["platform"]
    assert report["machine"]["gemm_gflops_mlx_fp32_1024"] > 0
    result = report["results"][0]
    assert result["preset"] == "tiny" and set(result["modes"]) == set(MODES)
    assert results[0]["modes"]["mlx jacobi"]["rms_deviation_from_sequential"] < 1e-1
    assert result["speedups"]["mlx_vs_torch_sample_rms_deviation"] < 1e-4  # same weights, same noise
    assert len(result["jacobi_sweep"]) > 0
    assert [entry["bits"] for entry in result["quantization"]] == [8, 4]


def test_bench_cli_mlx_only(tmp_path):
    main(
        [
            "--preset",
            "tiny",
            "--repeats",
            "1",
            "--no-sweep",
            "--no-torch",
            "--no-quantization",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "bench.json").read_text())["results"][0]
    assert set(result["modes"]) == {"mlx sequential", "mlx jacobi"}
