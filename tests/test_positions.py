"""RoPE angles against SPEC section 1, computed here independently (float64, from the formulas).

Both twins take their angles from starflow_core.positions, so twin parity cannot catch a
mistake there: these tests compare with the specification itself, on non-square grids, with
and without text, and as received by the attention of a flipped block in each twin.

Tolerance: 1e-5 absolute on angles of at most ~10 rad (and on their cos / sin): the library
computes in float32, whose spacing at 8 is 9.5e-7; a wrong scale or frequency is off by >1e-2.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import to_nhwc
from helpers.twins import random_inputs, twin_models

import starflow_mlx.layers as mlx_layers
from starflow_core.config import FlowConfig
from starflow_core.positions import rope_angles

ANGLE_TOLERANCE = 1e-5


def spec_angles(head_dim: int, height: int, width: int, side: int, txt_len: int, three_d: bool) -> np.ndarray:
    """(txt_len + height*width, head_dim) angles, straight from SPEC section 1, in float64."""
    half = head_dim // 2
    if three_d:  # row and column: (half-8)/2 frequencies 10000^(-2k/(half-8)); the third: 8, 10000^(-k/8)
        spatial = [10000.0 ** (-2 * k / (half - 8)) for k in range((half - 8) // 2)]
        third = [10000.0 ** (-k / 8) for k in range(8)]
    else:  # half/2 frequencies per coordinate, 10000^(-2k/half)
        spatial, third = [10000.0 ** (-2 * k / half) for k in range(half // 2)], []
    positions = [(0.0, 0.0, k * side / txt_len) for k in range(txt_len)]  # text first
    mean_side = math.sqrt(height * width)
    positions += [
        (i * side / mean_side, j * side / mean_side, 0.0) for i in range(height) for j in range(width)
    ]
    rows = []
    for row, col, text in positions:
        angles = [row * f for f in spatial] + [col * f for f in spatial] + [text * f for f in third]
        rows.append([angle for angle in angles for _ in range(2)])  # pair (2j, 2j+1) shares angle j
    return np.array(rows)


@pytest.mark.parametrize(
    ("head_dim", "height", "width", "side", "txt_len", "three_d"),
    [
        (32, 3, 5, 4, 0, False),  # 2D, non-square, training grid side 4
        (64, 2, 6, 4, 5, True),  # 3D with 5 text tokens, 1:3 aspect ratio
        (64, 6, 2, 4, 0, True),  # 3D in a block without text: third coordinate zero
        (32, 8, 8, 8, 0, False),  # the training grid itself: positions are the integer indices
    ],
)
def test_rope_angles_follow_the_spec(head_dim, height, width, side, txt_len, three_d):
    got = rope_angles(head_dim, height, width, side, txt_len, three_d)
    want = spec_angles(head_dim, height, width, side, txt_len, three_d)
    assert got.dtype == np.float32 and got.shape == want.shape == (txt_len + height * width, head_dim)
    np.testing.assert_allclose(got, want, rtol=0, atol=ANGLE_TOLERANCE)


# Three blocks, L2R: blocks 0 and 2 run flipped; only the deep block 2 sees the text.
FLIP_CONFIG = FlowConfig(
    in_channels=2,
    img_size=4,
    patch_size=1,
    channels=64,
    num_blocks=3,
    layers_per_block=(1, 1, 1),
    head_dim=64,
    rope=True,
    sos=True,
    txt_size=3,
    txt_dim=8,
    cond_top_only=True,
    use_softplus=True,
    seq_order="L2R",
)
HEIGHT, WIDTH = 2, 6  # not the 4x4 training grid: positions are scaled by P / sqrt(h w)


def captured_ropes_torch(model) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    seen, hooks = {}, []

    def record(index: int, args: tuple) -> None:  # a pre-hook that returns None leaves the call as it is
        seen.setdefault(index, tuple(t.numpy() for t in args[1]))

    for index, block in enumerate(model.blocks):
        hook = lambda module, args, index=index: record(index, args)
        hooks.append(block.attn_blocks[0].attention.register_forward_pre_hook(hook))
    x, y = random_inputs(FLIP_CONFIG, 1, HEIGHT, WIDTH)
    try:
        model(torch.from_numpy(x), torch.from_numpy(y))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def captured_ropes_mlx(model, monkeypatch) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    first_layers = {id(block.attn_blocks[0].attention): index for index, block in enumerate(model.blocks)}
    seen, call = {}, mlx_layers.Attention.__call__

    def spy(self, x, rope, *args, **kwargs):
        if id(self) in first_layers:
            seen.setdefault(first_layers[id(self)], tuple(np.array(t) for t in rope))
        return call(self, x, rope, *args, **kwargs)

    monkeypatch.setattr(mlx_layers.Attention, "__call__", spy)
    x, y = random_inputs(FLIP_CONFIG, 1, HEIGHT, WIDTH)
    model(to_nhwc(x), mx.array(y))
    return seen


@pytest.mark.parametrize("framework", ["torch", "mlx"])
def test_blocks_attend_with_spec_positions_by_sequence_index_after_a_flip(framework, tmp_path, monkeypatch):
    """A flipped block reverses its tokens but not the positions: sequence index t keeps the
    raster position of index t (SPEC section 1); text tokens come first, in the deep block only."""
    torch_model, mlx_model = twin_models(FLIP_CONFIG, tmp_path)
    seen = (
        captured_ropes_torch(torch_model)
        if framework == "torch"
        else captured_ropes_mlx(mlx_model, monkeypatch)
    )
    assert sorted(seen) == [0, 1, 2]
    assert FLIP_CONFIG.block_is_flipped(0) and FLIP_CONFIG.block_is_flipped(2)
    for index, (cos, sin) in seen.items():
        txt_len = FLIP_CONFIG.txt_size if FLIP_CONFIG.block_has_text(index) else 0
        want = spec_angles(FLIP_CONFIG.head_dim, HEIGHT, WIDTH, FLIP_CONFIG.img_size, txt_len, three_d=True)
        np.testing.assert_allclose(cos, np.cos(want), rtol=0, atol=ANGLE_TOLERANCE, err_msg=f"block {index}")
        np.testing.assert_allclose(sin, np.sin(want), rtol=0, atol=ANGLE_TOLERANCE, err_msg=f"block {index}")
