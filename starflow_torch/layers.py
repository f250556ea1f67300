"""Transformer layers of a flow block (pre-norm attention + MLP), official attribute names.

Weight names follow the official checkpoints: `attention.{norm,qkv,proj}`,
`mlp.{norm,main.0,main.2}`. Tensors here are token sequences (B, L, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .kv_cache import LayerCache


class RMSNorm(nn.Module):
    """RMSNorm with the weight stored as an offset: x * rsqrt(mean(x^2) + eps) * (1 + w), in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)


def norm_in_float32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm in at least fp32 (the official code normalises half-precision input in fp32)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return norm(x)
    if isinstance(norm, nn.LayerNorm):  # torch's CPU layer_norm refuses fp32 input with bf16 weights
        weight = None if norm.weight is None else norm.weight.float()
        bias = None if norm.bias is None else norm.bias.float()
        return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).type_as(x)
    return norm(x.float()).type_as(x)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1) by the angles behind cos/sin: x*cos + (-x1, x0)*sin."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


# A recomputed causal attention (the score step) runs this many bytes of fp32 scores per head
# group, each group recomputed on its own in the backward pass (as starflow_mlx.layers).
ATTENTION_SCRATCH_BYTES = 8 * 2**20


def causal_attention_in_head_groups(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal softmax(q k^T scale) v, (B, nh, L, hd), as groups of heads each under
    torch.utils.checkpoint: the same numbers, one group's scores alive in a gradient."""
    batch, heads, length, _ = q.shape
    group = max(1, ATTENTION_SCRATCH_BYTES // (batch * length * length * 4))
    if group >= heads:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    outs = [
        torch.utils.checkpoint.checkpoint(
            attend, q[:, i : i + group], k[:, i : i + group], v[:, i : i + group], use_reentrant=False
        )
        for i in range(0, heads, group)
    ]
    return torch.cat(outs, dim=1)


class Attention(nn.Module):
    def __init__(self, channels: int, head_dim: int, use_bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels, bias=use_bias)
        self.proj = nn.Linear(channels, channels, bias=use_bias)
        self.head_dim = head_dim
        self.num_heads = channels // head_dim

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache | None = None,
        query_scale: torch.Tensor | None = None,
        recompute: bool = False,
    ) -> torch.Tensor:
        """x (B, L, C); rope = (cos, sin) for these L positions, each (L, head_dim).

        Without a cache the attention is causal over the L positions. With a cache the
        L new keys/values are written at the cache's position `start` and the queries
        attend to the positions written so far through its mask (positions <= their own). query_scale (B, 1, 1, 1) divides
        the logits per sample: the inverse attention temperature.
        """
        B, L, C = x.shape
        normed = norm_in_float32(self.norm, x)
        q, k, v = self.qkv(normed).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, nh, L, hd)
        if rope is not None:
            cos, sin = rope
            q = rotate_pairs(q, cos, sin).to(x.dtype)
            k = rotate_pairs(k, cos, sin).to(x.dtype)
        if query_scale is not None:
            q = q * query_scale.to(q.dtype)
        scale = self.head_dim**-0.5
        if cache is None and recompute:  # a gradient recomputing in head groups (the score step)
            out = causal_attention_in_head_groups(q, k, v, scale)
        elif cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        else:
            keys, values = cache.write(k, v)  # (B, nh, start + L, hd)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=cache.mask, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class MLP(nn.Module):
    def __init__(self, channels: int, expansion: int, use_bias: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.main = nn.Sequential(
            nn.Linear(channels, channels * expansion, bias=use_bias),
            nn.GELU(),
            nn.Linear(channels * expansion, channels, bias=use_bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(norm_in_float32(self.norm, x))


class TransformerLayer(nn.Module):
    """One pre-norm residual layer (the official AttentionBlock)."""

    def __init__(self, channels: int, head_dim: int, expansion: int, use_bias: bool = True):
        super().__init__()
        self.attention = Attention(channels, head_dim, use_bias)
        self.mlp = MLP(channels, expansion, use_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache | None = None,
        query_scale: torch.Tensor | None = None,
        recompute: bool = False,
    ) -> torch.Tensor:
        """recompute (no cache): attention and MLP are each recomputed on their own in the
        backward pass, so a gradient holds one of them at a time (see FlowBlock.trunk)."""
        if recompute:
            checkpoint = torch.utils.checkpoint.checkpoint
            x = x + checkpoint(lambda h: self.attention(h, rope, recompute=True), x, use_reentrant=False)
            return x + checkpoint(self.mlp, x, use_reentrant=False)
        x = x + self.attention(x, rope, cache, query_scale)
        return x + self.mlp(x)
