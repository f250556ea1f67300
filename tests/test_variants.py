"""The official architectural options, checked against a NumPy transcription of the official
formulas (transformer_flow.py RMSNorm, Attention, MLP; misc/pe.py apply_rope) in float64.

The official vectors (starflow_arch) certify SwiGLU, RMSNorm, qk-norm, one key/value head
and no bias; this oracle covers what they do not: post-norm, several key/value heads (which
query head reads which one), explicit num_heads wider or narrower than channels, HF-style
RoPE, SwiGLU with biases and no pre-norm (norm_type none). Both twins' TransformerLayer are compared with it.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import max_relative_error, to_nhwc
from helpers.training import STARFLOW_TINY, encode_caption_shards, overrides

from starflow_core.config import FlowConfig
from starflow_core.positions import rope_angles

# ----- the official arithmetic, transcribed ----------------------------------------------------


def rms_norm(x, weight, eps=1e-6):
    """Official RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + weight)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + weight)


def layer_norm(x, weight, bias, eps=1e-5):
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt(np.mean(centred**2, -1, keepdims=True) + eps) * weight + bias


def rope_interleaved(x, theta):
    """misc/pe.py apply_rope: pairs (2j, 2j+1) rotate by theta_j; x (..., L, hd), theta (L, hd/2)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(theta) - odd * np.sin(theta)
    out[..., 1::2] = odd * np.cos(theta) + even * np.sin(theta)
    return out


def rope_hf(x, theta):
    """Official hf_style_rope: '... (u d) -> ... (d u)', apply_rope, then back."""
    half = x.shape[-1] // 2
    interleaved = x.reshape(*x.shape[:-1], 2, half).swapaxes(-1, -2).reshape(x.shape)
    rotated = rope_interleaved(interleaved, theta)
    return rotated.reshape(*x.shape[:-1], half, 2).swapaxes(-1, -2).reshape(x.shape)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def linear(p, name, x):
    out = x @ p[f"{name}.weight"].T
    return out + p[f"{name}.bias"] if f"{name}.bias" in p else out


def reference_layer(p, x, config: FlowConfig, theta):
    """One official AttentionBlock on x (L, C) (one sample), causal, RoPE angles theta (L, hd/2)."""
    nh, nkv, hd = config.query_heads, config.kv_heads, config.head_dim

    def norm(prefix, value):
        if config.norm_type == "none":
            return value
        if config.norm_type == "rms_norm":
            return rms_norm(value, p[f"{prefix}.weight"])
        return layer_norm(value, p[f"{prefix}.weight"], p[f"{prefix}.bias"])

    L = x.shape[0]
    qkv = linear(p, "attention.qkv", norm("attention.norm", x))
    q = qkv[:, : nh * hd].reshape(L, nh, hd).transpose(1, 0, 2)  # (nh, L, hd)
    k = qkv[:, nh * hd : (nh + nkv) * hd].reshape(L, nkv, hd).transpose(1, 0, 2)
    v = qkv[:, (nh + nkv) * hd :].reshape(L, nkv, hd).transpose(1, 0, 2)
    if config.use_qk_norm:
        q, k = rms_norm(q, p["attention.query_norm.weight"]), rms_norm(k, p["attention.key_norm.weight"])
    if config.rope:
        rotate = rope_hf if config.hf_style_rope else rope_interleaved
        q, k = rotate(q, theta), rotate(k, theta)
    k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)  # torch repeat_interleave
    scores = q @ k.transpose(0, 2, 1) * hd**-0.5
    scores = np.where(np.tril(np.ones((L, L), dtype=bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    attended = (weights / weights.sum(-1, keepdims=True)) @ v  # (nh, L, hd)
    out = linear(p, "attention.proj", attended.transpose(1, 0, 2).reshape(L, nh * hd))
    if config.use_post_norm:
        out = rms_norm(out, p["attention.post_norm.weight"])
    x = x + out
    h = norm("mlp.norm", x)
    if config.use_swiglu:
        h = linear(p, "mlp.down_proj", gelu_tanh(linear(p, "mlp.gate_proj", h)) * linear(p, "mlp.up_proj", h))
    else:
        h = linear(p, "mlp.main.0", h)
        h = linear(p, "mlp.main.2", 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2))))  # exact GELU
    if config.use_post_norm:
        h = rms_norm(h, p["mlp.post_norm.weight"])
    return x + h


# ----- the layers under test -------------------------------------------------------------------
_BASE = dict(in_channels=4, img_size=4, patch_size=1, num_blocks=1, layers_per_block=1, rope=True, sos=True)
LAYER_CONFIGS = {
    # 4 query heads in 2 groups: heads 0, 1 read key/value head 0, heads 2, 3 head 1
    "gqa_post_norm_swiglu_bias_hf_rope": FlowConfig(
        **_BASE, channels=64, head_dim=16, num_kv_heads=2, use_post_norm=True, use_swiglu=True,
        hf_style_rope=True,
    ),
    # 3 heads of 16 (48) read from 40 channels; one key/value head; no bias
    "explicit_heads_qk_norm_rms_no_bias": FlowConfig(
        **_BASE, channels=40, head_dim=16, num_heads=3, num_kv_heads=1, use_qk_norm=True,
        norm_type="rms_norm", use_bias=False,
    ),
    # post-norm after LayerNorm pre-norms, GELU MLP, interleaved RoPE, 6 heads wider than channels
    "post_norm_layer_norm_wide_heads": FlowConfig(
        **_BASE, channels=32, head_dim=8, num_heads=6, num_kv_heads=3, use_post_norm=True,
    ),
    # no pre-norm at all (norm_type none: the official Identity), post-norm only
    "no_prenorm_post_norm": FlowConfig(**_BASE, channels=32, head_dim=16, norm_type="none", use_post_norm=True),
}  # fmt: skip


def _random_parameters(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (0.3 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


def _layer_output(twin: str, config: FlowConfig, params, x, cos, sin) -> np.ndarray:
    if twin == "torch":
        from starflow_torch.layers import TransformerLayer

        layer = TransformerLayer(config)
        layer.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
        with torch.no_grad():
            return layer(torch.from_numpy(x), (torch.from_numpy(cos), torch.from_numpy(sin))).numpy()
    from starflow_mlx.layers import TransformerLayer

    layer = TransformerLayer(config)
    layer.load_weights([(k, mx.array(v)) for k, v in params.items()], strict=True)
    return np.array(layer(mx.array(x), (mx.array(cos), mx.array(sin))))


@pytest.mark.parametrize("twin", ["torch", "mlx"])
@pytest.mark.parametrize("name", sorted(LAYER_CONFIGS))
def test_layer_matches_the_official_arithmetic(name, twin):
    config = LAYER_CONFIGS[name]
    if twin == "torch":
        from starflow_torch.layers import TransformerLayer

        shapes = {k: tuple(v.shape) for k, v in TransformerLayer(config).state_dict().items()}
    else:
        from mlx.utils import tree_flatten

        from starflow_mlx.layers import TransformerLayer

        shapes = {k: tuple(v.shape) for k, v in tree_flatten(TransformerLayer(config).parameters())}
    params = _random_parameters(shapes, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 16, config.channels)).astype(np.float32)
    angles = rope_angles(config.head_dim, 4, 4, 4, halves=config.hf_style_rope)  # the twins' table
    theta = rope_angles(config.head_dim, 4, 4, 4)[:, 0::2].astype(np.float64)  # one angle per pair
    got = _layer_output(twin, config, params, x, np.cos(angles), np.sin(angles))
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    want = np.stack([reference_layer(p64, sample.astype(np.float64), config, theta) for sample in x])
    # float32 layer vs float64 transcription: rounding of sums over <= 64 terms (measured < 5e-7)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    assert np.abs(got - x).max() > 0.1  # the layer did something


def test_mlx_cached_attention_paths_agree_for_grouped_heads():
    """The KV-cached step uses masked_attention on CPU and mx.fast.scaled_dot_product_attention
    elsewhere (GPU): both must group query heads onto key/value heads like repeat_interleave."""
    from starflow_mlx.kv_cache import visible_keys_mask
    from starflow_mlx.layers import masked_attention

    rng = np.random.default_rng(0)
    q = mx.array(rng.standard_normal((2, 4, 8, 16)).astype(np.float32))  # 4 query heads
    keys, values = (mx.array(rng.standard_normal((2, 2, 64, 16)).astype(np.float32)) for _ in range(2))
    mask = visible_keys_mask(mx.array(20), 8, 64)  # queries at positions 20..27 of a 64-slot cache
    fast = mx.fast.scaled_dot_product_attention(q, keys, values, scale=0.25, mask=mask)
    expanded = [mx.repeat(t, 2, axis=1) for t in (keys, values)]  # head j serves query heads 2j, 2j+1
    reference = mx.fast.scaled_dot_product_attention(q, *expanded, scale=0.25, mask=mask)
    ours = masked_attention(q, keys, values, mask, 0.25)
    # same maths; exp_fused and a different summation order: measured 3.6e-7 absolute on outputs ~1
    assert float(mx.max(mx.abs(ours - reference))) < 1e-5
    assert float(mx.max(mx.abs(fast - reference))) < 1e-5


# ----- training ----------------------------------------------------------------------------------
# a text-conditioned latent model with every option: 2 query heads share 1 key/value head
VARIANT_MODEL = dict(
    STARFLOW_TINY, head_dim=16, num_kv_heads=1, use_swiglu=True, norm_type="rms_norm", use_qk_norm=True,
    use_post_norm=True, use_bias=False, hf_style_rope=True,
)  # fmt: skip
TRAINED_NORMS = ("attention.query_norm", "attention.key_norm", "attention.post_norm", "mlp.post_norm")


def test_both_trainers_train_a_variant_that_loads_in_the_other_twin(tmp_path):
    from starflow_core.training.config import load_run_config
    from starflow_mlx import StarFlow as MlxStarFlow
    from starflow_mlx.training import train as train_mlx
    from starflow_torch import StarFlow as TorchStarFlow
    from starflow_torch.training import train as train_torch

    shards = encode_caption_shards(tmp_path / "data")
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 4)).astype(np.float32)  # NCHW latents
    y = np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)
    for name, train in (("torch", train_torch), ("mlx", train_mlx)):
        settings = overrides(VARIANT_MODEL, data=str(shards), steps=3, drop_label=0.3)
        result = train(load_run_config(None, [*settings, f"train.out_dir={tmp_path / name}"]))
        assert result.progress.step == 3 and np.isfinite(result.losses).all(), name
        weights = mx.load(str(result.checkpoint / "model.safetensors"))
        for norm in TRAINED_NORMS:  # zero-initialised offsets that only training moves
            assert np.abs(np.array(weights[f"blocks.1.attn_blocks.0.{norm}.weight"])).max() > 0, (name, norm)
        want = TorchStarFlow.from_pretrained(result.checkpoint).log_prob(
            torch.from_numpy(x), torch.from_numpy(y)
        )
        got = MlxStarFlow.from_pretrained(result.checkpoint).log_prob(to_nhwc(x), mx.array(y))
        assert max_relative_error(np.array(got), want.detach().numpy()) < 1e-4, name  # fp32, other kernels
