"""Shared test fixtures.

The suite never switches BLAS process-wide (starflow_mlx.use_system_blas): torch and MLX run
in this one process, and torch's results change when OpenBLAS is loaded globally. MLX runs
on its bundled BLAS here; tests/test_blas.py checks the switch in processes of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# Test models are tiny: one torch thread avoids oversubscribing the cores MLX also uses.
torch.set_num_threads(1)


def load_vectors(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    folder = FIXTURES / name
    return json.loads((folder / "config.json").read_text()), load_file(str(folder / "io.safetensors"))


def to_nhwc(array: np.ndarray) -> mx.array:
    return mx.array(np.ascontiguousarray(array.transpose(0, 2, 3, 1)))


def to_nchw(array: mx.array) -> np.ndarray:
    return np.array(array).transpose(0, 3, 1, 2)


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: error relative to the array's scale.

    Per-element relative error is meaningless for entries near zero (a log-det that
    is a sum of +/- terms can be ~0.01 while each term is ~1).
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    mx.random.seed(0)
    np.random.seed(0)
    yield
