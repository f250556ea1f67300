"""Jacobi sampling of a frame-local block does not depend on local_attn_window.

A frame-local block (shallow_block_local) models every frame on its own; the window only
limits what the deep block attends to. The official Jacobi path runs such a block over all
B*T frames at once and stops each chunk when mean((x_new - x)^2) / mean(x_new^2) over all
of them is below the tolerance, so the same weights give the same sample, and the same
iteration counts, with or without a window. (Sampling the frames in window-sized groups,
each group stopping on its own, reaches different iterates: 4e-3 here.)
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.twins import twin_models

from starflow_core.config import FlowConfig

WINDOWED = FlowConfig(
    in_channels=2,
    img_size=2,
    patch_size=1,
    channels=32,
    num_blocks=3,
    layers_per_block=(1, 1, 2),
    head_dim=16,
    rope=True,
    sos=True,
    txt_size=2,
    txt_dim=8,
    cond_top_only=True,
    use_softplus=True,
    seq_order="L2R",
    temporal_causal=1,
    shallow_block_local=True,
    local_attn_window=2,
)
FRAMES, HEIGHT, WIDTH = 6, 2, 3


@pytest.mark.parametrize("twin", ["torch", "mlx"])
def test_frame_local_jacobi_ignores_the_window(twin, tmp_path):
    # Same seed, same architecture: identical weights; only the window differs.
    models = [
        twin_models(config, tmp_path / name, scale=0.1)[0 if twin == "torch" else 1]
        for name, config in (("window", WINDOWED), ("full", WINDOWED.replace(local_attn_window=None)))
    ]
    noise = np.random.default_rng(0).standard_normal((1, FRAMES, 2, HEIGHT, WIDTH)).astype(np.float32)
    if twin == "torch":
        import torch

        from starflow_torch import video
        from starflow_torch.sampling import BlockConditions, SamplingStats

        noise = torch.from_numpy(noise)
    else:
        import mlx.core as mx

        from starflow_mlx import video
        from starflow_mlx.sampling import BlockConditions, SamplingStats

        noise = mx.array(noise.transpose(0, 1, 3, 4, 2))
    cond = BlockConditions(None, None, 0.0, False, 1.0)
    jacobi = video.JacobiSettings(block_size=4, tol=1e-4, max_iter=50)  # chunks cross frame ends
    results, iterations = [], []
    for model in models:
        tokens, frames = model.tokens(noise)
        stats = SamplingStats()
        out = video.sample_block(
            model, 0, tokens, frames, noise.shape, cond, None, jacobi, None, False, stats
        )
        results.append(np.asarray(out))
        iterations.append(stats.jacobi_iterations)
    # Same computation on the same rows: equal up to float32 batching noise (measured 2e-7).
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)
    assert iterations[0] == iterations[1]
