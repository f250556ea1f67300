"""Transformer layers of a flow block (pre-norm attention + MLP), official attribute names.

Weight names follow the official checkpoints: `attention.{norm,qkv,proj}`,
`mlp.{norm,main.0,main.2}`, and for the official options `attention.{query_norm,
key_norm,post_norm}`, `mlp.{gate_proj,up_proj,down_proj,post_norm}`. Every module takes
the whole FlowConfig. Tensors here are token sequences (B, L, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from starflow_core.config import FlowConfig

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


def make_norm(config: FlowConfig) -> nn.Module:
    """The pre-norm of attention and MLP: LayerNorm (eps 1e-5), offset RMSNorm (eps 1e-6) or none."""
    if config.norm_type == "none":
        return nn.Identity()
    return RMSNorm(config.channels) if config.norm_type == "rms_norm" else nn.LayerNorm(config.channels)


def norm_in_float32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm in at least fp32 (the official code normalises half-precision input in fp32)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return norm(x)
    if isinstance(norm, nn.LayerNorm):  # torch's CPU layer_norm refuses fp32 input with bf16 weights
        weight = None if norm.weight is None else norm.weight.float()
        bias = None if norm.bias is None else norm.bias.float()
        return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).type_as(x)
    return norm(x.float()).type_as(x)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, halves: bool = False) -> torch.Tensor:
    """Rotate pairs (x0, x1) by the angles behind cos/sin: x*cos + (-x1, x0)*sin; pairs are
    (2j, 2j+1), or with halves (hf_style_rope) (j, j + head_dim/2)."""
    if halves:
        first, second = x.chunk(2, dim=-1)
        partner = torch.cat((-second, first), dim=-1)
    else:
        pairs = x.unflatten(-1, (-1, 2))
        partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + partner * sin


def repeat_kv_heads(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, nkv, S, hd) -> (B, nkv * groups, S, hd): key/value head j serves query heads
    j*groups .. j*groups + groups-1 (grouped-query attention, as the official repeat_interleave)."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


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
    """Causal self-attention with the official options: grouped key/value heads (num_kv_heads),
    per-head RMSNorm of queries and keys before RoPE (use_qk_norm), RMSNorm of the output
    (use_post_norm)."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = config.query_heads, config.kv_heads
        self.hf_style_rope = config.hf_style_rope
        query_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.norm = make_norm(config)
        self.qkv = nn.Linear(config.channels, query_width + 2 * kv_width, bias=config.use_bias)
        self.proj = nn.Linear(query_width, config.channels, bias=config.use_bias)
        if config.use_qk_norm:
            self.query_norm = RMSNorm(self.head_dim)
            self.key_norm = RMSNorm(self.head_dim)
        if config.use_post_norm:
            self.post_norm = RMSNorm(config.channels)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache | None = None,
        query_scale: torch.Tensor | None = None,
        recompute: bool = False,
        mask: torch.Tensor | str | None = "causal",
    ) -> torch.Tensor:
        """x (B, L, C); rope = (cos, sin) for these L positions, each (L, head_dim).

        Without a cache the attention is `mask` over the L positions: "causal", a (L, L) bool
        tensor (True: may attend) or None (every position sees every other). With a cache the
        L new keys/values are written at the cache's position `start` and the queries
        attend to the positions written so far through its mask (positions <= their
        own). query_scale (B, 1, 1, 1) divides the logits per sample: the inverse
        attention temperature.
        """
        B, L, _ = x.shape
        query_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv(norm_in_float32(self.norm, x)).split([query_width, kv_width, kv_width], dim=-1)
        q = q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, L, hd)
        k = k.view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, L, hd)
        v = v.view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "query_norm"):
            q, k = self.query_norm(q), self.key_norm(k)
        if rope is not None:
            cos, sin = rope
            q = rotate_pairs(q, cos, sin, self.hf_style_rope).to(x.dtype)
            k = rotate_pairs(k, cos, sin, self.hf_style_rope).to(x.dtype)
        if query_scale is not None:
            q = q * query_scale.to(q.dtype)
        scale = self.head_dim**-0.5
        groups = self.num_heads // self.num_kv_heads
        if cache is None:
            k, v = repeat_kv_heads(k, groups), repeat_kv_heads(v, groups)
            if isinstance(mask, str):  # "causal"
                if recompute:  # a gradient recomputing in head groups (the score step)
                    out = causal_attention_in_head_groups(q, k, v, scale)
                else:
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            else:  # the denoiser's mask: the MLX twin runs it in chunks of query rows; torch needs not,
                # its fused kernels take the mask (memory-efficient on CUDA, flash on CPU: 22 MiB
                # grew where a 16-head 4,096^2 bool-masked attention's scores are 1 GiB, torch 2.13)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        else:
            keys, values = cache.write(k, v)  # (B, nkv, start + L, hd)
            keys, values = repeat_kv_heads(keys, groups), repeat_kv_heads(values, groups)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=cache.mask, scale=scale)
        out = self.proj(out.transpose(1, 2).reshape(B, L, query_width))  # (B, L, C)
        return self.post_norm(out) if hasattr(self, "post_norm") else out


class MLP(nn.Module):
    """GELU MLP (`main`), or with use_swiglu the gated down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        channels, hidden, bias = config.channels, config.mlp_width, config.use_bias
        self.norm = make_norm(config)
        if config.use_swiglu:
            self.gate_proj = nn.Linear(channels, hidden, bias=bias)
            self.up_proj = nn.Linear(channels, hidden, bias=bias)
            self.down_proj = nn.Linear(hidden, channels, bias=bias)
        else:
            self.main = nn.Sequential(
                nn.Linear(channels, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, channels, bias=bias)
            )
        if config.use_post_norm:
            self.post_norm = RMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = norm_in_float32(self.norm, x)
        if hasattr(self, "gate_proj"):
            h = self.down_proj(F.gelu(self.gate_proj(h), approximate="tanh") * self.up_proj(h))
        else:
            h = self.main(h)
        return self.post_norm(h) if hasattr(self, "post_norm") else h


class TransformerLayer(nn.Module):
    """One pre-norm residual layer (the official AttentionBlock)."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: LayerCache | None = None,
        query_scale: torch.Tensor | None = None,
        recompute: bool = False,
        mask: torch.Tensor | str | None = "causal",
    ) -> torch.Tensor:
        """recompute (no cache): attention and MLP are each recomputed on their own in the
        backward pass, so a gradient holds one of them at a time (see FlowBlock.trunk).
        mask: the attention mask without a cache (see Attention)."""
        if recompute and isinstance(mask, str):
            checkpoint = torch.utils.checkpoint.checkpoint
            x = x + checkpoint(lambda h: self.attention(h, rope, recompute=True), x, use_reentrant=False)
            return x + checkpoint(self.mlp, x, use_reentrant=False)
        x = x + self.attention(x, rope, cache, query_scale, mask=mask)
        return x + self.mlp(x)
