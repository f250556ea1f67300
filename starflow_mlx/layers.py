"""Transformer layers of a flow block (pre-norm attention + MLP), official attribute names.

Weight names follow the official checkpoints: `attention.{norm,qkv,proj}`,
`mlp.{norm,main.0,main.2}`, and for the official options `attention.{query_norm,
key_norm,post_norm}`, `mlp.{gate_proj,up_proj,down_proj,post_norm}`. Every module takes
the whole FlowConfig. Arrays here are token sequences (B, L, C).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.frames import query_chunk_rows

from .blas import blas_status
from .kv_cache import LayerCache


class RMSNorm(nn.Module):
    """RMSNorm with the weight stored as an offset: x * rsqrt(mean(x^2) + eps) * (1 + w), in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = mx.zeros((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        offset_weight = 1.0 + self.weight.astype(mx.float32)
        return mx.fast.rms_norm(x.astype(mx.float32), offset_weight, self.eps).astype(x.dtype)


# Up to this many rows (B x L) Linear computes (W @ x^T)^T, not x @ W^T, when MLX uses
# OpenBLAS: with OpenBLAS 0.3.21 (one thread, 2-core CI machine) the MLP down-projection
# (512 x 2048) at 4 rows took 0.36 ms instead of 0.82, and one layer's four linears 0.61x
# the time at 4 rows, 0.83x at 64 (hot weights). MKL (STARFLOW_BLAS) is faster the usual
# way round (0.95 ms per layer at 4 rows, 1.6 ms weight first), so only OpenBLAS gets it.
# Larger products (training, full forward passes) keep nn.Linear's path.
FEW_ROWS = 64 if "openblas" in str(blas_status()["library"]).lower() else 0


class Linear(nn.Linear):
    """nn.Linear (same parameters, same quantization) with a faster few-row product on CPU."""

    def __call__(self, x: mx.array) -> mx.array:
        rows = x.size // x.shape[-1]
        if rows > FEW_ROWS or mx.default_device() != mx.cpu:
            return super().__call__(x)
        out = (self.weight @ x.reshape(rows, x.shape[-1]).T).T.reshape(*x.shape[:-1], -1)
        return out + self.bias if "bias" in self else out


def make_norm(config: FlowConfig) -> nn.Module:
    """The pre-norm of attention and MLP: LayerNorm (eps 1e-5), offset RMSNorm (eps 1e-6) or none."""
    if config.norm_type == "none":
        return nn.Identity()
    return RMSNorm(config.channels) if config.norm_type == "rms_norm" else nn.LayerNorm(config.channels)


def norm_in_float32(norm: nn.Module, x: mx.array) -> mx.array:
    """Apply a norm in at least fp32 (the official code normalises half-precision input in fp32)."""
    if x.dtype in (mx.float16, mx.bfloat16):
        return norm(x.astype(mx.float32)).astype(x.dtype)
    return norm(x)


# Rational approximation of erf on [-4, 4] (the fp32 one of Eigen and XLA): odd polynomial
# over even polynomial in x^2, error within a few fp32 ulps; erf(+-4) rounds to +-1 in fp32.
_ERF_NUMERATOR = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_DENOMINATOR = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def erf_rational(x: mx.array) -> mx.array:
    """erf(x) from multiplies, adds and one divide, which fuse under mx.compile (mx.erf is a slow
    scalar loop on CPU: 7x slower than the whole GELU this way)."""
    x = mx.clip(x, -4.0, 4.0)
    x2 = x * x
    numerator = _ERF_NUMERATOR[0]
    for coefficient in _ERF_NUMERATOR[1:]:
        numerator = numerator * x2 + coefficient
    denominator = _ERF_DENOMINATOR[0]
    for coefficient in _ERF_DENOMINATOR[1:]:
        denominator = denominator * x2 + coefficient
    return x * numerator / denominator


@mx.custom_function
def gelu_erf(x: mx.array) -> mx.array:
    """x * (1 + erf(x / sqrt 2)) / 2 with the fused erf; its gradient keeps only x (see gelu_erf_vjp)."""
    return 0.5 * x * (1.0 + erf_rational(x * 0.7071067811865476))


@gelu_erf.vjp
def gelu_erf_vjp(primals, cotangent, output):
    """d gelu / dx = Phi(x) + x phi(x). The default gradient would keep every intermediate of the
    erf polynomial (about 20 arrays of the MLP's hidden size per layer) for the backward pass;
    this one recomputes from x, so the score step's memory is not dominated by GELU."""
    x = primals[0] if isinstance(primals, (list, tuple)) else primals  # MLX passes a lone input bare
    cdf = 0.5 * (1.0 + erf_rational(x * 0.7071067811865476))
    pdf = mx.exp(-0.5 * x * x) * 0.3989422804014327  # 1 / sqrt(2 pi)
    return (cotangent * (cdf + x * pdf)).astype(x.dtype)


class GELU(nn.Module):
    """Exact (erf) GELU, x * (1 + erf(x / sqrt 2)) / 2, as in the official model; no parameters."""

    def __call__(self, x: mx.array) -> mx.array:
        return gelu_erf(x)


def gelu_tanh(x: mx.array) -> mx.array:
    """The tanh approximation of GELU (torch's approximate="tanh"), the official SwiGLU gate.

    0.5 (1 + tanh(u)) = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3). (mlx.nn.gelu_approx
    is a different, sigmoid-based approximation.)
    """
    return x * mx.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))


_LOG2_E = 1.4426950408889634
# Taylor coefficients of 2^f = exp(f ln 2) for |f| <= 1/2: degree 7 leaves < 1e-8 relative.
_EXP2_COEFFICIENTS = tuple(math.log(2.0) ** k / math.factorial(k) for k in range(8))


def exp_fused(x: mx.array) -> mx.array:
    """exp(x) for fp32 x <= 0 (to ~1e-6 relative, like mx.exp; down to 2^-125, the floor).

    2^(x log2 e) split as 2^n 2^f, n an integer set by the float exponent bits, 2^f a
    polynomial: multiplies, adds and bit operations that fuse under mx.compile, where
    mx.exp on CPU is a scalar loop (~4x slower than this).
    """
    y = mx.maximum(x * _LOG2_E, -125.0)
    n = mx.floor(y + 0.5)
    f = y - n  # in [-1/2, 1/2]
    power = _EXP2_COEFFICIENTS[-1]
    for coefficient in _EXP2_COEFFICIENTS[-2::-1]:
        power = power * f + coefficient
    two_to_n = mx.view(mx.left_shift(n.astype(mx.int32) + 127, 23), mx.float32)
    return power * two_to_n


def masked_attention(q: mx.array, keys: mx.array, values: mx.array, mask: mx.array, scale: float) -> mx.array:
    """softmax(q k^T scale | mask) v, q (B, nh, L, hd), keys/values (B, nkv, S, hd), mask (L, S) bool.

    What mx.fast.scaled_dot_product_attention computes, grouped heads included (query
    head i reads key/value head i // (nh / nkv)); on CPU the softmax's mx.exp dominates
    it, so this spells it out with exp_fused (fp32 scores).
    """
    B, nh, L, hd = q.shape
    groups = nh // keys.shape[1]
    if groups > 1:  # each key/value head serves `groups` consecutive query heads
        q = q.reshape(B, keys.shape[1], groups, L, hd)
        keys, values = keys[:, :, None], values[:, :, None]  # (B, nkv, 1, S, hd)
    scores = (q * scale) @ keys.swapaxes(-1, -2)  # (B, nh, L, S) or (B, nkv, groups, L, S)
    scores = mx.where(mask, scores.astype(mx.float32), -1e30)
    weights = mx.where(mask, exp_fused(scores - mx.max(scores, axis=-1, keepdims=True)), 0.0)
    out = (weights.astype(values.dtype) @ values) / mx.sum(weights, axis=-1, keepdims=True).astype(
        values.dtype
    )
    return out.reshape(B, nh, L, hd)


@functools.cache
def pair_swap(dim: int, halves: bool = False) -> mx.array:
    """(dim, dim) signed permutation P with x @ P = (-x1, x0, -x3, x2, ...), the partner of each
    rotated pair; with halves (hf_style_rope) pairs are (j, j + dim/2): x @ P = (-x[h:], x[:h])."""
    swap = np.zeros((dim, dim), dtype=np.float32)
    if halves:
        half = dim // 2
        swap[half:, :half] = -np.eye(half, dtype=np.float32)
        swap[:half, half:] = np.eye(half, dtype=np.float32)
    else:
        swap[1::2, 0::2] = -np.eye(dim // 2, dtype=np.float32)
        swap[0::2, 1::2] = np.eye(dim // 2, dtype=np.float32)
    return mx.array(swap)


def rotate_pairs(x: mx.array, cos: mx.array, sin: mx.array, halves: bool = False) -> mx.array:
    """Rotate pairs (x0, x1) by the angles behind cos/sin: x*cos + (-x1, x0)*sin.

    The partner (-x1, x0) is one exact product with a signed permutation (every output is
    one input times +-1): on CPU that is one BLAS call, where strided slices and a stack
    were several copies per layer and step.
    """
    return x * cos + (x @ pair_swap(x.shape[-1], halves)) * sin


# The score step's gradient runs each attention and MLP in pieces, one piece at a time
# (in_order): positions for the projections and the MLP, head groups for the attention scores.
# Measured on one width-1024 layer at 1,152 positions, fp32: attention 251 -> 121 MB and MLP
# 227 -> 67 MB of gradient scratch, bit-identical gradients.
SCORE_STEP_POSITION_PIECES = 4
ATTENTION_SCRATCH_BYTES = 8 * 2**20  # fp32 scores per head group (one head of the 3B at 1,152: 5.3 MB)


def position_pieces(length: int, count: int = SCORE_STEP_POSITION_PIECES) -> list[tuple[int, int]]:
    step = -(-length // count)
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def in_order(
    fn: Callable[..., mx.array],
    arrays: list[mx.array],
    axes: list[int],
    pieces: list[list[tuple[int, int]]],
    out_axis: int,
) -> mx.array:
    """fn over pieces of `arrays` (piece j of array i: pieces[i][j] along axes[i]), concatenated
    along out_axis (the output piece j as long as pieces[0][j]): each piece computed only once the
    previous one is done, in the forward pass and in its gradient, which recomputes the piece.

    MLX evaluates the independent branches of a graph together, and a gradient evaluates every
    piece's first cotangent before any piece's second: without the order each piece's scratch
    is alive at once. `fn` must depend on its arguments alone for its gradient: arrays it closes
    over (weights) get none, as with mx.checkpoint; this is for gradients w.r.t. the input."""
    count = len(pieces[0])

    def split(whole) -> list[list[mx.array]]:
        parts = []
        for j in range(count):
            part = []
            for array, axis, bounds in zip(whole, axes, pieces, strict=True):
                index = [slice(None)] * array.ndim
                index[axis] = slice(*bounds[j])
                part.append(array[tuple(index)])
            parts.append(part)
        return parts

    def after(part: list[mx.array], previous: list[mx.array] | None) -> list[mx.array]:
        return part if previous is None else mx.depends(part, previous)

    @mx.custom_function
    def run(*whole):
        outputs, previous = [], None
        for part in split(whole):
            outputs.append(fn(*after(part, previous)))
            previous = [outputs[-1]]
        return mx.concatenate(outputs, axis=out_axis)

    @run.vjp
    def run_vjp(primals, cotangent, output):
        primals = list(primals) if isinstance(primals, (list, tuple)) else [primals]  # a lone one comes bare
        cotangent = cotangent[0] if isinstance(cotangent, (list, tuple)) else cotangent
        gradients, previous = [[] for _ in arrays], None
        for j, part in enumerate(split(primals)):
            index = [slice(None)] * cotangent.ndim
            index[out_axis] = slice(*pieces[0][j])
            _, part_gradients = mx.vjp(fn, after(part, previous), [cotangent[tuple(index)]])
            for collected, gradient in zip(gradients, part_gradients, strict=True):
                collected.append(gradient)
            previous = list(part_gradients)  # all of them: the next piece waits for this one's scratch to go
        return [mx.concatenate(collected, axis=axis) for collected, axis in zip(gradients, axes, strict=True)]

    return run(*arrays)


def causal_attention_in_head_groups(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """Causal softmax(q k^T scale) v, q (B, nh, L, hd), k / v (B, nkv, L, hd), as groups of query
    heads (whole key/value groups) computed one after another (in_order): the same numbers, with
    one group's scores alive in a gradient instead of every head's."""
    batch, heads, length, _ = q.shape
    per_kv = heads // k.shape[1]  # query heads sharing one key/value head (grouped-query attention)
    group = max(1, ATTENTION_SCRATCH_BYTES // (batch * length * length * 4))
    group = max(per_kv, group // per_kv * per_kv)
    if group >= heads:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")

    def attend(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")

    query_groups = [(first, first + group) for first in range(0, heads, group)]
    kv_groups = [(first // per_kv, last // per_kv) for first, last in query_groups]
    return in_order(attend, [q, k, v], [1, 1, 1], [query_groups, kv_groups, kv_groups], 1)


def attention_in_query_chunks(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    mask: mx.array,
    scale: float,
    rows: int | None = None,
    evaluate: bool = False,
) -> mx.array:
    """softmax(q k^T scale | mask) v with q (B, nh, L, hd), k / v (B, nkv, S, hd), mask (L, S) bool,
    in chunks of `rows` query rows (default: float32 scores of at most DENOISER_SCORE_BYTES per
    chunk, starflow_core.frames.query_chunk_rows), one chunk after another: the scores alive are a
    chunk's (B, nh, rows, S), not (B, nh, L, S). Every row's softmax still sees all S keys, so the
    numbers are the whole attention's.

    The order is mx.depends (each chunk waits for the previous one's output), which a gradient
    and mx.compile keep; MLX may still encode a few chunks ahead of the computation, so with
    evaluate (inference, not inside mx.compile) each chunk is also evaluated before the next is
    built, and the bound holds exactly."""
    length = q.shape[2]
    rows = rows or query_chunk_rows(q.shape[0], q.shape[1], k.shape[2])
    if rows >= length:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    outputs = []
    for start in range(0, length, rows):
        part = q[:, :, start : start + rows]
        if outputs:  # after the previous chunk, so its scores are gone before these are made
            part = mx.depends(part, outputs[-1])
        rows_mask = mask[start : start + rows]
        outputs.append(mx.fast.scaled_dot_product_attention(part, k, v, scale=scale, mask=rows_mask))
        if evaluate:
            mx.eval(outputs[-1])
    return mx.concatenate(outputs, axis=2)


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
        self.qkv = Linear(config.channels, query_width + 2 * kv_width, bias=config.use_bias)
        self.proj = Linear(query_width, config.channels, bias=config.use_bias)
        if config.use_qk_norm:
            self.query_norm = RMSNorm(self.head_dim)
            self.key_norm = RMSNorm(self.head_dim)
        if config.use_post_norm:
            self.post_norm = RMSNorm(config.channels)

    def __call__(
        self,
        x: mx.array,
        rope: tuple[mx.array, mx.array] | None,
        cache: LayerCache | None = None,
        query_scale: mx.array | None = None,
        recompute: bool = False,
        mask: mx.array | str | None = "causal",
        evaluate: bool = False,
    ) -> mx.array:
        """x (B, L, C); rope = (cos, sin) for these L positions, each (L, head_dim).

        Without a cache the attention is `mask` over the L positions: "causal", a (L, L) bool
        array (True: may attend) or None (every position sees every other). With a cache the
        L new keys/values are written at the cache's position `start` and the queries
        attend to a fixed-size prefix of the cache through its mask (positions <= their
        own). query_scale (B, 1, 1, 1) divides the logits per sample: the inverse
        attention temperature. An array mask runs in chunks of query rows
        (attention_in_query_chunks; evaluate: each chunk evaluated before the next, for inference).
        """
        B, L, _ = x.shape
        nh = self.num_heads
        if cache is None and recompute and query_scale is None and isinstance(mask, str):
            return self.recomputed(x, rope)
        qk, v = self.queries_keys_values(x, *(rope if rope is not None else (None, None)))
        qk = qk.transpose(0, 2, 1, 3)  # (B, nh + nkv, L, hd)
        q, k = qk[:, :nh], qk[:, nh:]
        v = v.transpose(0, 2, 1, 3)  # (B, nkv, L, hd)
        if query_scale is not None:
            q = q * query_scale.astype(q.dtype)
        scale = self.head_dim**-0.5
        if cache is None and isinstance(mask, mx.array):  # the learned denoiser's mask over a whole video
            out = attention_in_query_chunks(q, k, v, mask, scale, evaluate=evaluate)
        elif cache is None:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        else:
            keys, values = cache.write(k, v)  # (B, nkv, visible, hd)
            if mx.default_device() == mx.cpu:
                out = masked_attention(q, keys, values, cache.mask, scale)
            else:
                out = mx.fast.scaled_dot_product_attention(q, keys, values, scale=scale, mask=cache.mask)
        return self.project_out(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def queries_keys_values(
        self, x: mx.array, cos: mx.array | None, sin: mx.array | None
    ) -> tuple[mx.array, mx.array]:
        """x (B, l, C) -> queries and keys normed and rotated, side by side (B, l, nh + nkv, hd),
        and values (B, l, nkv, hd); cos / sin (l, hd) or None without RoPE."""
        B, length, _ = x.shape
        nh, nkv = self.num_heads, self.num_kv_heads
        # (B, l, nh + 2 nkv, hd): queries, keys, values head by head (a free reshape)
        qkv = self.qkv(norm_in_float32(self.norm, x)).reshape(B, length, nh + 2 * nkv, self.head_dim)
        qk = qkv[:, :, : nh + nkv]  # queries and keys side by side, so one rotation serves both
        if hasattr(self, "query_norm"):
            qk = mx.concatenate([self.query_norm(qk[:, :, :nh]), self.key_norm(qk[:, :, nh:])], axis=2)
        if cos is not None:
            qk = rotate_pairs(qk, cos[:, None], sin[:, None], self.hf_style_rope).astype(x.dtype)
        return qk, qkv[:, :, nh + nkv :]

    def project_out(self, out: mx.array) -> mx.array:
        """Heads joined (B, l, nh hd) -> (B, l, C)."""
        out = self.proj(out)
        return self.post_norm(out) if hasattr(self, "post_norm") else out

    def recomputed(self, x: mx.array, rope: tuple[mx.array, mx.array] | None) -> mx.array:
        """The same attention for the score step's gradient: projections by pieces of positions
        and scores by head groups, one piece at a time (in_order), so its scratch is a piece's."""
        B, L, _ = x.shape
        nh, nkv = self.num_heads, self.num_kv_heads

        def project_in(h, cos=None, sin=None):  # one array out, as in_order needs
            return mx.concatenate(self.queries_keys_values(h, cos, sin), axis=2)

        positions = position_pieces(L)
        arrays, axes = ([x], [1]) if rope is None else ([x, *rope], [1, 0, 0])
        qkv = in_order(project_in, arrays, axes, [positions] * len(arrays), 1)
        qkv = qkv.transpose(0, 2, 1, 3)  # (B, nh + 2 nkv, L, hd)
        q, k, v = qkv[:, :nh], qkv[:, nh : nh + nkv], qkv[:, nh + nkv :]
        out = causal_attention_in_head_groups(q, k, v, self.head_dim**-0.5)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
        return in_order(self.project_out, [out], [1], [positions], 1)


class MLP(nn.Module):
    """GELU MLP (`main`), or with use_swiglu the gated down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        channels, hidden, bias = config.channels, config.mlp_width, config.use_bias
        self.norm = make_norm(config)
        if config.use_swiglu:
            self.gate_proj = Linear(channels, hidden, bias=bias)
            self.up_proj = Linear(channels, hidden, bias=bias)
            self.down_proj = Linear(hidden, channels, bias=bias)
        else:
            # a list, not nn.Sequential, so the weight names are the official `main.0` / `main.2`
            self.main = [Linear(channels, hidden, bias=bias), GELU(), Linear(hidden, channels, bias=bias)]
        if config.use_post_norm:
            self.post_norm = RMSNorm(channels)

    def __call__(self, x: mx.array) -> mx.array:
        h = norm_in_float32(self.norm, x)
        if hasattr(self, "gate_proj"):
            h = self.down_proj(gelu_tanh(self.gate_proj(h)) * self.up_proj(h))
        else:
            for layer in self.main:
                h = layer(h)
        return self.post_norm(h) if hasattr(self, "post_norm") else h


class TransformerLayer(nn.Module):
    """One pre-norm residual layer (the official AttentionBlock)."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = MLP(config)

    def __call__(
        self,
        x: mx.array,
        rope: tuple[mx.array, mx.array] | None,
        cache: LayerCache | None = None,
        query_scale: mx.array | None = None,
        recompute: bool = False,
        mask: mx.array | str | None = "causal",
        evaluate: bool = False,
    ) -> mx.array:
        """recompute (no cache): attention and MLP are each recomputed on their own in the
        backward pass, so a gradient holds one of them at a time (see FlowBlock.trunk).
        mask, evaluate: the attention mask without a cache and how it runs (see Attention)."""
        if recompute and isinstance(mask, str):  # pieces one at a time, each recomputed in the gradient
            x = x + self.attention(x, rope, recompute=True)
            return x + in_order(self.mlp, [x], [1], [position_pieces(x.shape[1])], 1)
        x = x + self.attention(x, rope, cache, query_scale, mask=mask, evaluate=evaluate)
        return x + self.mlp(x)
