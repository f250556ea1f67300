"""The memory and disk check: a run this machine cannot hold is refused (exit 2, one line naming
the need and an option that fits) before anything is downloaded or written."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

import starflow_core.generation.resource_check as resource_check
from starflow_core.generation import cli as generate_cli
from starflow_core.generation.precision import Precision
from starflow_core.generation.resources import (
    SD_VAE_PARAMETERS,
    RunShape,
    T5Shape,
    estimate_memory,
    flow_parameters,
    flow_weight_bytes,
    t5_weight_bytes,
)
from starflow_core.presets import preset
from starflow_core.sources.releases import RELEASES

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9


def run_cli(module: str, *args, tmp: Path) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp / "hf"),
        "STARFLOW_MLX_CACHE": str(tmp / "converted"),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=tmp,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_weight_bytes_of_the_3b_release():
    """Exact sizes: the official checkpoint's 3,858,281,544 parameters, flan-T5-XL's encoder."""
    config = preset("starflow-3b-t2i-256")
    assert flow_parameters(config) == 3_858_281_544
    assert flow_weight_bytes(config, "bfloat16") == 2 * 3_858_281_544
    assert t5_weight_bytes(T5Shape(), "float32") == 4 * 1_223_527_424  # 4.9 GB, as the issue counts
    four_bit = flow_weight_bytes(config, "bfloat16", quantize=4)
    assert 0.27 < four_bit / flow_weight_bytes(config, "bfloat16") < 0.29  # 4.5 bits a weight + proj_*


def test_targets_of_issue_17_hold_in_the_estimate():
    """bf16 peak <= 9 GB, 4-bit flow + 8-bit T5 <= 4 GB for one guided, denoised 256px image."""
    config, shape = preset("starflow-3b-t2i-256"), RunShape(batch=1)
    bf16 = estimate_memory(config, Precision("bfloat16"), shape, T5Shape(), SD_VAE_PARAMETERS)
    small = estimate_memory(config, Precision("bfloat16", 4, 8), shape, T5Shape(), SD_VAE_PARAMETERS)
    assert bf16.peak <= 9 * GB and small.peak <= 4 * GB
    assert bf16.weights["flow"] == 2 * 3_858_281_544


@pytest.mark.parametrize(
    "twin, limit, expected",
    [
        ("starflow_mlx.generate", 4, "--dtype bfloat16 --quantize 4"),
        ("starflow_mlx.generate", 12, "--dtype bfloat16 needs about 8.6 GB"),
        ("starflow_torch.generate", 4, "no option of this command fits"),
    ],
    ids=["mlx-4gb", "mlx-12gb", "torch-4gb"],
)
def test_impossible_memory_request_exits_2_before_any_download(twin, limit, expected, tmp_path):
    result = run_cli(
        twin,
        "a cat",
        "--model",
        "starflow-3b-t2i-256",
        "--memory-limit",
        limit,
        "--output",
        "cat.png",
        tmp=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr  # one clear line
    assert "needs about 17.1 GB of memory at its peak (denoise)" in lines[0]  # --dtype auto: fp32 on CPU
    assert f"{limit}.0 GB (--memory-limit)" in lines[0] and expected in lines[0]
    assert not (tmp_path / "hf").exists() and not (tmp_path / "converted").exists()  # nothing fetched
    assert not (tmp_path / "cat.png").exists()


def test_disk_check_names_the_downloads_and_refuses_before_any(tmp_path, monkeypatch):
    """The generate command line (framework-free part) with a machine of ample memory and 20 GB
    of free disk: the 3B release's first run needs more, and no download starts."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("STARFLOW_MLX_CACHE", str(tmp_path / "converted"))

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded before the disk check")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    monkeypatch.setattr(resource_check, "free_disk", lambda folder: (20 * 10**9, tmp_path))

    def no_load(parts, args):
        raise AssertionError("nothing may be loaded before the disk check")

    backend = generate_cli.Backend(
        load=no_load,
        peak_memory=lambda: None,
        precision=lambda args: Precision("float32" if args.dtype == "auto" else args.dtype),
        memory=lambda args: (10**12, "test machine"),
    )
    parser = generate_cli.build_parser("generate", "test", torch=True)
    argv = ["a cat", "--model", "starflow-3b-t2i-256", "--output", str(tmp_path / "x.png")]
    with pytest.raises(resource_check.InsufficientResourcesError) as info:
        generate_cli.run(parser.parse_args(argv), backend)
    message = str(info.value)
    # fp32 run: .pth 15.4 GB + T5 <= 11.4 GB + VAE 0.3 GB + fp32 converted copy 15.4 GB
    assert "writes about 42.6 GB" in message and "only 20.0 GB is free" in message
    assert "apple/starflow starflow_3B_t2i_256x256.pth 15.4 GB" in message
    assert "the converted flow (float32) 15.4 GB" in message
    assert generate_cli.main(argv, parser, backend) == 2  # the command line: exit 2
    monkeypatch.setattr(resource_check, "free_disk", lambda folder: (40 * 10**9, tmp_path))
    with pytest.raises(
        resource_check.InsufficientResourcesError, match="with --dtype bfloat16 it writes 34.9 GB"
    ):
        generate_cli.run(parser.parse_args(argv), backend)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "converted").exists()


def test_first_run_disk_counts_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    release = RELEASES["starflow-3b-t2i-256"]
    needs = resource_check.first_run_disk(release, "bfloat16")
    sizes = {need.what: need.size for need in needs}
    # the first run's disk is at most the .pth + the encoder's shards + one bf16 converted copy
    assert sizes["the converted flow (bfloat16)"] == 2 * 3_858_281_544
    assert sum(sizes.values()) <= 4 * 3_858_281_544 + 11.4e9 + 0.335e9 + 2 * 3_858_281_544


def test_run_shape_follows_the_flags():
    parser = generate_cli.build_parser("generate", "test")
    args = parser.parse_args(["a", "--height", "128", "--width", "256", "--cfg", "0", "--sequential"])
    sizes = resource_check.model_sizes("starflow-3b-t2i-256")
    shape = generate_cli.run_shape(args, sizes, jobs=3)
    assert shape == RunShape(batch=3, tokens=16 * 32, pixels=128 * 256, guided=False, block_size=1)
    assert parser.parse_args([]).dtype == "auto"
    assert isinstance(args, argparse.Namespace)
