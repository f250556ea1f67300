"""The numerically delicate arithmetic of the flow, in fp32, in one place.

A block predicts, for every token, a raw scale `a` and a shift `b`. The affine map
data -> noise is z = (x - b) / s, with per-element log-det -log s (STARFlow paper,
section 3.1); s = softplus(a + INV_SOFTPLUS_1) (s = 1 at a = 0) or s = exp(a).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from starflow_core.config import INV_SOFTPLUS_1


def scale_and_log_scale(raw_scale: torch.Tensor, use_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (s, log s) in fp32 from the raw network output a."""
    raw_scale = raw_scale.float()
    if use_softplus:
        scale = F.softplus(raw_scale + INV_SOFTPLUS_1)
        return scale, torch.log(scale)
    return torch.exp(raw_scale), raw_scale


def to_noise(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() - shift.float()) / scale


def to_data(z: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return z.float() * scale + shift.float()


def guide_scale_shift(
    shift_cond: torch.Tensor,
    scale_cond: torch.Tensor,
    shift_null: torch.Tensor,
    scale_null: torch.Tensor,
    weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """STARFlow guidance on the Gaussian of the next token (official "logits_guided").

    Sharpens p_c^(1+w) / p_u^w: r = min(s_c/s_u, 1)^2, d = 1 + w - w r,
    s = s_c / sqrt(d), mu = ((1 + w) mu_c - w r mu_u) / d.
    """
    ratio = (scale_cond / scale_null).clamp(max=1.0).square()
    denominator = 1.0 + weight - weight * ratio
    scale = scale_cond / denominator.sqrt()
    shift = ((1.0 + weight) * shift_cond - (weight * ratio) * shift_null) / denominator
    return shift, scale


def guide_linear(cond: torch.Tensor, null: torch.Tensor, weight: float) -> torch.Tensor:
    """TARFlow guidance on raw outputs: c + w (c - u)."""
    return cond + weight * (cond - null)
