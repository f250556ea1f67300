"""The memory and disk check: a run this machine cannot hold is refused (exit 2, one line naming
the need and an option that fits) before anything is downloaded or written."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from helpers.waiting import HANG_GUARD_S

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
        timeout=HANG_GUARD_S,
    )


def test_weight_bytes_of_the_3b_release():
    """Exact sizes: the official checkpoint's 3,858,281,544 parameters, flan-T5-XL's encoder."""
    config = preset("starflow-3b-t2i-256")
    assert flow_parameters(config) == 3_858_281_544
    assert flow_weight_bytes(config, "bfloat16") == 2 * 3_858_281_544
    assert t5_weight_bytes(T5Shape(), "float32") == 4 * 1_223_527_424  # 4.9 GB
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
    parser = generate_cli.build_parser("starflow_torch.generate", "test", torch=True)
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
    parser = generate_cli.build_parser("starflow_mlx.generate", "test")
    args = parser.parse_args(["a", "--height", "128", "--width", "256", "--cfg", "0", "--sequential"])
    sizes = resource_check.model_sizes("starflow-3b-t2i-256")
    shape = generate_cli.run_shape(args, sizes, jobs=3)
    assert shape == RunShape(batch=3, tokens=16 * 32, pixels=128 * 256, guided=False, block_size=1)
    assert parser.parse_args([]).dtype == "auto"
    assert isinstance(args, argparse.Namespace)


def test_the_memory_check_keeps_its_margin():
    """The check asks for 10% above the estimated peak (allocator slack, the OS's share): a limit
    between the estimate and the estimate + 10% is refused, and so is an option needing it."""
    sizes = resource_check.model_sizes("starflow-3b-t2i-256")
    shape, full, half = RunShape(batch=1), Precision("float32"), Precision("bfloat16")
    peak = resource_check.estimate_run(sizes, full, shape, True).peak
    check = lambda limit: resource_check.check_memory(sizes, full, shape, True, (limit, "test"), True)
    assert check(math.ceil(peak * 1.1)).peak == peak  # exactly the margin: accepted
    with pytest.raises(resource_check.InsufficientResourcesError, match="needs about 17.1 GB"):
        check(int(peak * 1.05))  # above the estimate, inside the margin
    # bfloat16 fits within 1.05x its need but not with the margin: not suggested, 4-bit is
    half_peak = resource_check.estimate_run(sizes, half, shape, True).peak
    with pytest.raises(resource_check.InsufficientResourcesError) as refused:
        check(int(half_peak * 1.05))
    assert "--dtype bfloat16 needs" not in str(refused.value)
    assert "--dtype bfloat16 --quantize 8 needs" in str(refused.value)


def test_first_run_disk_in_every_cache_state(tmp_path, monkeypatch):
    """Nothing cached: the .pth and its conversion. The .pth only: its conversion. Both: neither.
    (A conversion without its .pth cannot be matched to a checkpoint: both are counted.)"""
    from helpers.tiny_pipeline import add_to_fake_hub

    from starflow_core.sources.releases import CONVERTED, _converted_folder, first_run_disk

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("STARFLOW_MLX_CACHE", str(tmp_path / "converted"))
    release = RELEASES["starflow-3b-t2i-256"]
    pth_need = (f"{release.flow_repo} {release.flow_file}", flow_parameters(release.config) * 4)

    def flow_needs(dtype: str) -> list[tuple[str, int]]:
        return [(n.what, n.size) for n in first_run_disk(release, dtype) if "flow" in n.what]

    converted = {dtype: (f"{CONVERTED} ({dtype})", flow_weight_bytes(release.config, dtype)) for dtype in
                 ("float32", "bfloat16")}  # fmt: skip
    assert flow_needs("bfloat16") == [pth_need, converted["bfloat16"]]  # nothing cached
    (tmp_path / "weights.pth").write_bytes(b"stands in for the checkpoint")
    snapshot = add_to_fake_hub(tmp_path / "hf", release.flow_repo, {release.flow_file: tmp_path / "weights.pth"},
                               "c0ffee" * 6 + "c0ff")  # fmt: skip
    pth = snapshot / release.flow_file
    assert flow_needs("bfloat16") == [converted["bfloat16"]]  # the .pth only
    assert flow_needs("float32") == [converted["float32"]]
    folder = _converted_folder(release, pth, "bfloat16")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert flow_needs("bfloat16") == [converted["bfloat16"]]  # half a conversion is no conversion
    (folder / "model.safetensors").write_bytes(b"")
    assert flow_needs("bfloat16") == []  # both
    assert flow_needs("float32") == [converted["float32"]]  # a bf16 copy cannot serve float32
    float32 = _converted_folder(release, pth, "float32")
    float32.mkdir(parents=True)
    (float32 / "config.json").write_text("{}")
    (float32 / "model.safetensors").write_bytes(b"")
    assert flow_needs("float32") == [] and flow_needs("float16") == []  # float32 serves every dtype
    pth.unlink()  # a conversion whose .pth is gone
    assert flow_needs("bfloat16") == [pth_need, converted["bfloat16"]]
