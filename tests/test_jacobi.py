"""Jacobi sampling equals sequential sampling when iterated to convergence, in both twins.

Models: the "tiny" preset (sos, RoPE, text in the deep block, softplus, final norm,
soft clip), and the same with grouped key/value heads, with random weights whose
proj_out and sos are perturbed, so no block is the identity and Jacobi has to iterate
(starflow_core.bench.weights.build_random_folder).
"""

from __future__ import annotations

import math

# isort: off
import mlx.core as mx

# isort: on
import numpy as np
import pytest
import torch

from starflow_core.bench.settings import BenchSettings, make_inputs
from starflow_core.bench.weights import build_random_folder
from starflow_core.presets import preset
from starflow_mlx import SamplingStats, StarFlow
from starflow_torch import SamplingStats as TorchStats
from starflow_torch import StarFlow as TorchStarFlow

GUIDANCE = 2.0
BLOCK_SIZE = 8


MODELS = {
    "tiny": preset("tiny"),
    # grouped KV heads: 4 query heads share 2 cached key/value heads (official num_kv_heads)
    "tiny_gqa": preset("tiny").replace(head_dim=16, num_kv_heads=2),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def folder(tmp_path_factory, request):
    path = tmp_path_factory.mktemp(request.param)
    build_random_folder(MODELS[request.param], path, BenchSettings(proj_out_std=0.05))
    return path


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(preset("tiny"), batch=2, seed=3)


def sample_mlx(model, inputs, guidance, **kwargs):
    noise = mx.array(inputs["noise"].transpose(0, 2, 3, 1))
    y, y_null = mx.array(inputs["y"]), mx.array(inputs["y_null"])
    return np.array(model.sample(noise, y, y_null, guidance, **kwargs)).transpose(0, 3, 1, 2)


def sample_torch(model, inputs, guidance, **kwargs):
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    return model.sample(tensors["noise"], tensors["y"], tensors["y_null"], guidance, **kwargs).numpy()


def relative_max(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("guidance", [0.0, GUIDANCE])
def test_converged_jacobi_equals_sequential(folder, inputs, framework, guidance):
    """tol=0 and max_iter=block_size: after L iterations a chunk of L tokens is exact (each
    iteration fixes at least one more token), so only float rounding differs: the chunk
    batches L tokens through the matmuls where sequential runs one. Bound 1e-4 of the max
    magnitude, the tolerance of the official vectors' z; observed ~1e-6."""
    if framework == "mlx":
        model, sample, stats = StarFlow.from_pretrained(folder), sample_mlx, SamplingStats()
    else:
        model, sample, stats = TorchStarFlow.from_pretrained(folder), sample_torch, TorchStats()
    sequential = sample(model, inputs, guidance)
    jacobi = sample(model, inputs, guidance, jacobi=True, block_size=BLOCK_SIZE, tol=0.0, max_iter=BLOCK_SIZE)
    assert relative_max(jacobi, sequential) < 1e-4
    # and the fixed point really moved away from the noise: the blocks are not the identity
    assert relative_max(sequential, inputs["noise"]) > 1e-2

    loose = sample(
        model, inputs, guidance, jacobi=True, block_size=BLOCK_SIZE, tol=1e-10, max_iter=32, stats=stats
    )
    assert relative_max(loose, sequential) < 1e-4
    targets = model.config.grid_size**2 - (0 if model.config.sos else 1)  # tokens a block samples
    chunks = [min(BLOCK_SIZE, targets - first) for first in range(0, targets, BLOCK_SIZE)]
    active_blocks = sum(n > 0 for n in model.config.layers_per_block)
    assert len(stats.jacobi_iterations) == active_blocks
    for counts in stats.jacobi_iterations:
        assert len(counts) == len(chunks) == math.ceil(targets / BLOCK_SIZE)
        # The documented bound: iteration k fixes token k of the chunk for good, so after L
        # iterations a chunk of L tokens is exact and iteration L + 1 recomputes the same values
        # from the same inputs (a change of exactly 0 < tol). At least 2: one to move, one to see
        # no change. Far below max_iter (32), which would otherwise hide a sampler that never stops.
        assert all(2 <= n <= length + 1 for n, length in zip(counts, chunks, strict=True)), counts
    assert stats.steps == stats.total_iterations


def test_sequential_stats_count_tokens(folder, inputs):
    model, stats = StarFlow.from_pretrained(folder), SamplingStats()
    sample_mlx(model, inputs, GUIDANCE, stats=stats)
    assert stats.jacobi_iterations == []
    assert stats.steps == model.config.grid_size**2 * sum(n > 0 for n in model.config.layers_per_block)


def test_loose_tolerance_stops_early(folder, inputs):
    model, stats = StarFlow.from_pretrained(folder), SamplingStats()
    sample_mlx(model, inputs, GUIDANCE, jacobi=True, block_size=16, tol=1e-2, max_iter=32, stats=stats)
    assert max(max(counts) for counts in stats.jacobi_iterations) < 16


@pytest.mark.parametrize("jacobi", [False, True])
def test_compiled_step_equals_uncompiled(folder, inputs, jacobi):
    """mx.compile fuses elementwise chains (different rounding order), hence 1e-5, not 0."""
    model = StarFlow.from_pretrained(folder)
    kwargs = dict(jacobi=True, block_size=BLOCK_SIZE, tol=1e-3, max_iter=4) if jacobi else {}
    compiled = sample_mlx(model, inputs, GUIDANCE, **kwargs)
    mx.disable_compile()
    try:
        eager = sample_mlx(model, inputs, GUIDANCE, **kwargs)
    finally:
        mx.enable_compile()
    assert relative_max(compiled, eager) < 1e-5
