"""The numerically delicate arithmetic of the flow, in fp32, in one place.

A block predicts, for every token, a raw scale `a` and a shift `b`. The affine map
data -> noise is z = (x - b) / s, with per-element log-det -log s (STARFlow paper,
section 3.1); s = softplus(a + INV_SOFTPLUS_1) (s = 1 at a = 0) or s = exp(a).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from starflow_core.config import INV_SOFTPLUS_1


def scale_and_log_scale(raw_scale: mx.array, use_softplus: bool) -> tuple[mx.array, mx.array]:
    """Return (s, log s) in fp32 from the raw network output a."""
    raw_scale = raw_scale.astype(mx.float32)
    if use_softplus:
        scale = nn.softplus(raw_scale + INV_SOFTPLUS_1)
        return scale, mx.log(scale)
    return mx.exp(raw_scale), raw_scale


def to_noise(x: mx.array, shift: mx.array, scale: mx.array) -> mx.array:
    return (x.astype(mx.float32) - shift.astype(mx.float32)) / scale


def to_data(z: mx.array, shift: mx.array, scale: mx.array) -> mx.array:
    return z.astype(mx.float32) * scale + shift.astype(mx.float32)


def guide_scale_shift(
    shift_cond: mx.array,
    scale_cond: mx.array,
    shift_null: mx.array,
    scale_null: mx.array,
    weight: float | mx.array,
) -> tuple[mx.array, mx.array]:
    """STARFlow guidance on the Gaussian of the next token (official "logits_guided").

    Sharpens p_c^(1+w) / p_u^w: r = min(s_c/s_u, 1)^2, d = 1 + w - w r,
    s = s_c / sqrt(d), mu = ((1 + w) mu_c - w r mu_u) / d.
    """
    ratio = mx.square(mx.minimum(scale_cond / scale_null, 1.0))
    denominator = 1.0 + weight - weight * ratio
    scale = scale_cond / mx.sqrt(denominator)
    shift = ((1.0 + weight) * shift_cond - (weight * ratio) * shift_null) / denominator
    return shift, scale


def guide_linear(cond: mx.array, null: mx.array, weight: float | mx.array) -> mx.array:
    """TARFlow guidance on raw outputs: c + w (c - u)."""
    return cond + weight * (cond - null)
