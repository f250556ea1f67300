"""An unconditional video model: txt_size > 0 with txt_dim = 0 (no text anywhere).

The official Model accepts this combination, and a video model without text needs it: frames
are placed by the third RoPE coordinate, whose frequencies exist only when txt_size > 0
(the head splits into 2-D image and 8 frame/text frequencies), while txt_dim = 0 gives no
block a text projection. So txt_size only shapes the RoPE table; no text tokens are used.
"""

from __future__ import annotations

import numpy as np
import torch
from conftest import max_relative_error
from helpers.twins import twin_models

from starflow_core.config import FlowConfig
from starflow_core.positions import rope_angles

UNCONDITIONAL = FlowConfig(
    in_channels=2,
    img_size=2,
    patch_size=1,
    channels=32,
    num_blocks=3,
    layers_per_block=(1, 1, 2),
    head_dim=16,
    rope=True,
    sos=True,
    txt_size=3,
    txt_dim=0,
    cond_top_only=True,
    use_softplus=True,
    seq_order="L2R",
    temporal_causal=1,
    shallow_block_local=True,
)
HEIGHT, WIDTH, FRAMES = 2, 3, 3


def test_no_block_sees_text_but_frames_take_the_3d_rope(tmp_path):
    config = UNCONDITIONAL
    assert not any(config.block_has_text(i) for i in range(config.num_blocks))
    torch_model, _ = twin_models(config, tmp_path)
    # Passing text features changes nothing: the table has no text rows and the 3-D split
    # (image frequencies + 8 frame frequencies), as official get_freqs_cis gives a model whose
    # txt_size > 0 but txt_dim == 0.
    cos, _ = torch_model.rope(config.deep_block, HEIGHT, WIDTH, 5, "cpu", FRAMES)
    angles = rope_angles(config.head_dim, HEIGHT, WIDTH, config.rope_seq_len, 0, three_d=True, frames=FRAMES)
    assert cos.shape[0] == FRAMES * HEIGHT * WIDTH
    np.testing.assert_allclose(cos.numpy(), np.cos(angles), atol=1e-6)  # float32 cos of the same angles


def test_unconditional_video_round_trips_in_both_twins(tmp_path):
    torch_model, mlx_model = twin_models(UNCONDITIONAL, tmp_path, scale=0.1)
    import mlx.core as mx

    x = np.random.default_rng(0).standard_normal((2, FRAMES, 2, HEIGHT, WIDTH)).astype(np.float32)
    with torch.no_grad():
        z, logdet = torch_model(torch.from_numpy(x))
    assert max_relative_error(z.numpy(), x) > 0.05  # the flow is not the identity
    back = torch_model.sample(z)
    # Sampling inverts the forward pass; 1e-4: float32 error over 3 blocks of a tiny model.
    np.testing.assert_allclose(back.numpy(), x, atol=1e-4)
    z_mlx, logdet_mlx = mlx_model(mx.array(x.transpose(0, 1, 3, 4, 2)))
    # Twin parity, 1e-4 of scale (SPEC section 7's forward tolerance).
    assert max_relative_error(np.asarray(z_mlx).transpose(0, 1, 4, 2, 3), z.numpy()) < 1e-4
    assert max_relative_error(np.asarray(logdet_mlx), logdet.numpy()) < 1e-4
