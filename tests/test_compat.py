"""What version 0.1.0 wrote still loads, and what its users typed still works (with a note)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.waiting import HANG_GUARD_S
from safetensors import safe_open

import starflow_mlx.pipeline as mlx_pipeline
import starflow_torch.pipeline as torch_pipeline
from starflow_core.config import FlowConfig

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
V010 = FIXTURES / "pipeline_v0_1_0"


def recorded_images() -> tuple[np.ndarray, list[str], list[int]]:
    with safe_open(str(FIXTURES / "pipeline_v0_1_0_expected.safetensors"), "numpy") as f:
        meta = f.metadata()
        return f.get_tensor("images"), json.loads(meta["prompts"]), json.loads(meta["seeds"])


@pytest.mark.parametrize("twin", [mlx_pipeline, torch_pipeline], ids=["mlx", "torch"])
def test_a_0_1_0_pipeline_folder_loads_and_makes_the_same_images(twin):
    images, prompts, seeds = recorded_images()
    pipe = twin.StarFlowPipeline.from_pretrained(V010)
    result = pipe.generate(prompts, seeds=seeds)
    # Recorded by the MLX twin of 0.1.0 in fp32; the twins agree to ~2e-6 on tiny pipelines
    # (README), so 1e-4 of the [-1, 1] range catches any change in the arithmetic.
    np.testing.assert_allclose(result.images, images, atol=1e-4)


def test_a_0_1_0_config_json_loads():
    config = FlowConfig.load(V010 / "transformer" / "config.json")
    assert config.num_classes == 3 and config.family == "starflow"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S
    )


@pytest.mark.parametrize(
    ("module", "replacement"),
    [("starflow_convert", "starflow_mlx.convert"), ("starflow_torch.sample", "starflow_torch.generate")],
)
def test_old_command_paths_still_work_with_a_note(module, replacement):
    result = run("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "deprecated" in result.stderr and replacement in result.stderr


def test_old_import_name_still_works():
    result = run("-c", "from starflow_convert import FlowConfig, preset; print(preset('tiny').channels)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "64"
