"""The MLX and torch twins compute the same numbers on configurations the vectors do not cover.

Same weights (exchanged through our folder format), same inputs -> same z, log-det
and samples. Tolerances: forward 1e-4 of the array's scale, samples 1e-3 absolute
(fp32 kernels of two libraries differ in summation order; a sample compounds that
error through every block's inverse).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import max_relative_error, to_nchw, to_nhwc
from helpers.twins import random_inputs, twin_models

from starflow_core.config import FlowConfig
from starflow_core.official.shapes import expected_weight_shapes

CONFIGS = {
    "nonsquare_l2r_text": (
        FlowConfig(
            in_channels=4,
            img_size=8,
            patch_size=1,
            channels=64,
            num_blocks=3,
            layers_per_block=(1, 1, 2),
            head_dim=32,
            rope=True,
            sos=True,
            txt_size=5,
            txt_dim=16,
            cond_top_only=True,
            use_softplus=True,
            use_final_norm=True,
            soft_clip=4.0,
            seq_order="L2R",
        ),
        (6, 10),
    ),
    "r2l_no_sos_patch2_all_text": (
        FlowConfig(
            in_channels=3,
            img_size=8,
            patch_size=2,
            channels=64,
            num_blocks=2,
            layers_per_block=(1, 1),
            head_dim=32,
            rope=True,
            sos=False,
            txt_size=3,
            txt_dim=8,
            cond_top_only=False,
            use_softplus=False,
            seq_order="R2L",
        ),
        (8, 8),
    ),
    "pos_embed_identity_block": (
        FlowConfig(
            in_channels=2,
            img_size=4,
            patch_size=1,
            channels=32,
            num_blocks=3,
            layers_per_block=(1, 0, 1),
            head_dim=16,
            rope=False,
            sos=True,
            use_softplus=True,
            seq_order="L2R",
        ),
        (4, 4),
    ),
    "rope_2d_unconditional": (
        FlowConfig(
            in_channels=2,
            img_size=8,
            patch_size=2,
            channels=32,
            num_blocks=2,
            layers_per_block=(1, 1),
            head_dim=16,
            rope=True,
            sos=True,
            use_softplus=True,
            use_final_norm=True,
            seq_order="R2L",
        ),
        (12, 8),
    ),
    "tarflow_classes_patch2": (
        FlowConfig(
            family="tarflow",
            in_channels=3,
            img_size=8,
            patch_size=2,
            channels=32,
            num_blocks=2,
            layers_per_block=(1, 1),
            head_dim=16,
            num_classes=5,
        ),
        (8, 8),
    ),
    "starflow_labels": (
        FlowConfig(
            in_channels=1,
            img_size=4,
            patch_size=1,
            channels=64,
            num_blocks=2,
            layers_per_block=(1, 1),
            head_dim=32,
            rope=True,
            sos=True,
            txt_size=1,
            txt_dim=4,
            num_classes=3,
            cond_top_only=True,
            use_softplus=True,
            seq_order="L2R",
        ),
        (4, 4),
    ),
}

# The official architectural options (transformer_flow.Model), in combinations the official
# vectors (starflow_arch: SwiGLU, RMSNorm, qk-norm, one KV head, no bias) do not cover.
_TEXT_MODEL = dict(
    in_channels=4, img_size=8, patch_size=1, channels=64, num_blocks=3, layers_per_block=(1, 1, 2),
    head_dim=32, rope=True, sos=True, txt_size=5, txt_dim=16, cond_top_only=True, use_softplus=True,
    use_final_norm=True, soft_clip=4.0, seq_order="L2R",
)  # fmt: skip
CONFIGS.update(
    {
        # post-norm after LayerNorm pre-norms, R2L, a training grid (pt_seq_len) of 6, non-square
        "variant_post_norm_layer_norm_r2l": (
            FlowConfig(**{**_TEXT_MODEL, "use_post_norm": True, "seq_order": "R2L", "pt_seq_len": 6}),
            (6, 10),
        ),
        # qk-norm, no pre-norm (norm_type none), HF-style RoPE, text in every block, patch 2, no sos
        "variant_qk_norm_no_prenorm_all_text_patch2": (
            FlowConfig(
                **{**_TEXT_MODEL, "in_channels": 3, "patch_size": 2, "cond_top_only": False, "sos": False},
                use_qk_norm=True,
                hf_style_rope=True,
                norm_type="none",
            ),
            (8, 8),
        ),
        # grouped KV heads (4 query heads share 2), head_dim 16 with text: RoPE is text-only
        "variant_gqa_2kv_head_dim_16": (
            FlowConfig(**{**_TEXT_MODEL, "head_dim": 16}, num_kv_heads=2),
            (8, 8),
        ),
        # SwiGLU with biases, RMSNorm, learned pos_embed, unconditional
        "variant_swiglu_bias_rms_pos_embed": (
            FlowConfig(
                in_channels=2,
                img_size=4,
                patch_size=1,
                channels=32,
                num_blocks=2,
                layers_per_block=(1, 2),
                head_dim=16,
                sos=True,
                use_softplus=True,
                seq_order="L2R",
                use_swiglu=True,
                norm_type="rms_norm",
            ),
            (4, 4),
        ),  # fmt: skip
        # everything at once, Gemma-like: explicit heads wider than channels (3 x 16 = 48 > 40),
        # one KV head, no bias, post-norm, qk-norm, HF RoPE, SwiGLU, RMSNorm, 2D RoPE, patch 2
        "variant_all_options_no_bias": (
            FlowConfig(
                in_channels=3,
                img_size=8,
                patch_size=2,
                channels=40,
                num_blocks=2,
                layers_per_block=(1, 2),
                head_dim=16,
                num_heads=3,
                num_kv_heads=1,
                rope=True,
                sos=True,
                use_softplus=True,
                use_final_norm=True,
                seq_order="R2L",
                use_swiglu=True,
                use_qk_norm=True,
                use_post_norm=True,
                hf_style_rope=True,
                norm_type="rms_norm",
                use_bias=False,
            ),
            (8, 12),
        ),  # fmt: skip
    }
)


def _to_torch(y):
    return None if y is None else torch.from_numpy(y)


def _to_mlx(y):
    return None if y is None else mx.array(y)


def _null(config: FlowConfig, y):
    if config.txt_dim and not config.label_conditioned:
        return np.zeros_like(y)  # any fixed features stand in for the encoded empty prompt
    return None


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_twins_agree(name, tmp_path):
    config, (height, width) = CONFIGS[name]
    torch_model, mlx_model = twin_models(config, tmp_path)
    x, y = random_inputs(config, 2, height, width)
    z_t, ld_t = torch_model(torch.from_numpy(x), _to_torch(y))
    z_m, ld_m = mlx_model(to_nhwc(x), _to_mlx(y))
    assert max_relative_error(to_nchw(z_m), z_t.detach().numpy()) < 1e-4
    assert max_relative_error(np.array(ld_m), ld_t.detach().numpy()) < 1e-4

    y_null = _null(config, y)
    guidance = 1.5 if (config.txt_dim or config.num_classes) else 0.0
    kwargs = dict(guidance=guidance, annealed_guidance=name.startswith("nonsquare"))
    s_t = torch_model.sample(torch.from_numpy(x), _to_torch(y), _to_torch(y_null), **kwargs).numpy()
    s_m = to_nchw(mlx_model.sample(to_nhwc(x), _to_mlx(y), _to_mlx(y_null), **kwargs))
    np.testing.assert_allclose(s_m, s_t, atol=1e-3, rtol=0)
    assert np.abs(s_t - x).max() > 1e-2  # the flow is not the identity: the comparison means something


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_both_twins_build_the_same_parameter_names(name):
    from starflow_mlx import StarFlow as MlxStarFlow
    from starflow_mlx.checkpoint import parameter_shapes
    from starflow_torch import StarFlow as TorchStarFlow

    config, _ = CONFIGS[name]
    torch_shapes = {k: tuple(v.shape) for k, v in TorchStarFlow(config).state_dict().items()}
    assert torch_shapes == parameter_shapes(MlxStarFlow(config)) == expected_weight_shapes(config)


def test_attention_temperature_matches(tmp_path):
    config, (height, width) = CONFIGS["tarflow_classes_patch2"]
    torch_model, mlx_model = twin_models(config, tmp_path)
    x, y = random_inputs(config, 2, height, width)
    s_t = torch_model.sample(torch.from_numpy(x), torch.from_numpy(y), guidance=2.0, attn_temp=0.7).numpy()
    s_m = to_nchw(mlx_model.sample(to_nhwc(x), mx.array(y), guidance=2.0, attn_temp=0.7))
    s_plain = torch_model.sample(torch.from_numpy(x), torch.from_numpy(y), guidance=2.0).numpy()
    np.testing.assert_allclose(s_m, s_t, atol=1e-3, rtol=0)
    assert np.abs(s_t - s_plain).max() > 1e-4  # the temperature changed the null branch
