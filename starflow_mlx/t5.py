"""T5 / flan-T5 encoder in MLX, loading Hugging Face T5 weights as they are.

Attribute paths are the transformers parameter names (``shared``, ``encoder.block.{i}.layer.0.
SelfAttention.q``, ...), so loading is a filter: decoder and ``lm_head`` weights of a full
T5 checkpoint are never read, ``encoder.embed_tokens`` is the tied copy of ``shared``
(starflow_core.sources.t5_files picks the files and tensors).

What makes T5 differ from a textbook transformer (all followed here):
- RMS layer norm without mean or bias, statistics in float32;
- attention scores are NOT scaled by 1/sqrt(d_kv);
- a learned relative position bias, computed once by the first layer and shared by all;
- flan-T5 (v1.1) FFN: ``wo(gelu_tanh(wi_0 x) * wi_1 x)``; original T5: ``wo(relu(wi x))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from starflow_core.io import read_safetensors_header, safetensors_shapes
from starflow_core.sources.t5_files import encoder_tensor_names, encoder_weight_files
from starflow_core.validation import read_json_object

CONFIG_NAME = "config.json"

# transformers' feed_forward_proj -> (gated, activation); "gated-gelu" uses the tanh approximation.
FEED_FORWARD_KINDS = {
    "relu": (False, "relu"),
    "gelu": (False, "gelu"),
    "gated-gelu": (True, "gelu_tanh"),
    "gated-relu": (True, "relu"),
    "gated-silu": (True, "silu"),
}


def gelu_tanh(x: mx.array) -> mx.array:
    """transformers' "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "gelu_tanh": gelu_tanh, "silu": nn.silu}


@dataclass(frozen=True)
class T5Config:
    """Encoder hyperparameters; defaults are google/flan-t5-xl (the STARFlow 3B text encoder)."""

    vocab_size: int = 32128
    d_model: int = 2048
    d_kv: int = 64
    d_ff: int = 5120
    num_layers: int = 24
    num_heads: int = 32
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __post_init__(self) -> None:
        if self.feed_forward_proj not in FEED_FORWARD_KINDS:
            raise ValueError(
                f"T5Config.feed_forward_proj {self.feed_forward_proj!r} "
                f"is not one of {sorted(FEED_FORWARD_KINDS)}"
            )
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"T5Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                "T5Config.relative_attention_num_buckets must be >= 4, "
                f"got {self.relative_attention_num_buckets}"
            )

    @classmethod
    def from_hf(cls, config: dict, source: str = "config") -> T5Config:
        """Read the encoder fields of a transformers T5 ``config.json``.

        A T5 config also carries decoder, generation and task fields; they do not change the
        encoder and are ignored (a foreign format, unlike our own configs).
        """
        model_type = config.get("model_type", "t5")
        if model_type != "t5":
            raise ValueError(f"{source}: model_type is {model_type!r}, expected 't5'")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in config.items() if key in known})


FLAN_T5_XL = T5Config()
FLAN_T5_BASE = T5Config(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets of (key position - query position), (length, length) int.

    Half the buckets per direction; within a direction, distances below num_buckets/4 get
    their own bucket, larger ones share log-spaced buckets up to max_distance. The log is
    computed in float32 exactly as transformers does, so boundary distances land alike.
    """
    positions = np.arange(length)
    relative = positions[None, :] - positions[:, None]  # (query, key): key - query
    half = num_buckets // 2
    max_exact = half // 2
    distance = np.abs(relative)
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact)
    log_bucket = np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + log_bucket.astype(np.int64), half - 1)
    return (relative > 0) * half + np.where(distance < max_exact, distance, large)


class T5LayerNorm(nn.Module):
    """RMS norm, no mean subtraction, no bias; the statistic in float32."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        normed = x32 * mx.rsqrt(mx.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight * normed.astype(self.weight.dtype)


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.config = config
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(
                config.relative_attention_num_buckets, config.num_heads
            )

    def position_bias(self, length: int) -> mx.array:
        """(1, num_heads, length, length) float32 bias added to the attention scores."""
        buckets = relative_position_buckets(
            length, self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance
        )
        values = self.relative_attention_bias(mx.array(buckets))  # (L, L, heads)
        return values.transpose(2, 0, 1)[None].astype(mx.float32)

    def __call__(self, x: mx.array, score_bias: mx.array) -> mx.array:
        batch, length, _ = x.shape
        heads, head_dim = self.config.num_heads, self.config.d_kv

        def split_heads(t: mx.array) -> mx.array:
            return t.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)  # (B, nh, L, hd)

        query, key, value = (split_heads(proj(x)) for proj in (self.q, self.k, self.v))
        # No 1/sqrt(d_kv) scaling in T5 (folded into the initialisation); scores in float32.
        scores = query.astype(mx.float32) @ key.astype(mx.float32).transpose(0, 1, 3, 2) + score_bias
        weights = mx.softmax(scores, axis=-1).astype(value.dtype)  # (B, nh, L, L)
        attended = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)
        return self.o(attended)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, x: mx.array, score_bias: mx.array) -> mx.array:
        return x + self.SelfAttention(self.layer_norm(x), score_bias)


class T5DenseActDense(nn.Module):
    def __init__(self, config: T5Config, activation: str):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.wo(self.activation(self.wi(x)))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: T5Config, activation: str):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.wo(self.activation(self.wi_0(x)) * self.wi_1(x))


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        gated, activation = FEED_FORWARD_KINDS[config.feed_forward_proj]
        dense = T5DenseGatedActDense if gated else T5DenseActDense
        self.DenseReluDense = dense(config, activation)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.DenseReluDense(self.layer_norm(x))


def clamp_float16_overflow(x: mx.array) -> mx.array:
    """transformers clamps float16 hidden states that overflowed to inf back to max - 1000."""
    if x.dtype != mx.float16:
        return x
    limit = float(np.finfo(np.float16).max) - 1000.0
    return mx.where(mx.isinf(x).any(), mx.clip(x, -limit, limit), x)


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.layer = [T5LayerSelfAttention(config, has_relative_attention_bias), T5LayerFF(config)]

    def __call__(self, x: mx.array, score_bias: mx.array) -> mx.array:
        x = clamp_float16_overflow(self.layer[0](x, score_bias))
        return clamp_float16_overflow(self.layer[1](x))


class T5Stack(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        # Only the first block owns the relative position bias; every block reuses it.
        self.block = [T5Block(config, has_relative_attention_bias=(i == 0)) for i in range(config.num_layers)]
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def __call__(self, x: mx.array, attention_mask: mx.array) -> mx.array:
        length = x.shape[1]
        # Padding keys get a large negative score, so their softmax weight is exactly 0.
        mask_bias = mx.where(attention_mask[:, None, None, :] > 0, 0.0, -1e30).astype(mx.float32)  # (B,1,1,L)
        score_bias = self.block[0].layer[0].SelfAttention.position_bias(length) + mask_bias  # (B, nh, L, L)
        for block in self.block:
            x = block(x, score_bias)
        return self.final_layer_norm(x)


class T5Encoder(nn.Module):
    """Token ids (B, L) + attention mask (B, L) -> last hidden state (B, L, d_model)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None) -> mx.array:
        if attention_mask is None:
            attention_mask = mx.ones(input_ids.shape, dtype=mx.int32)
        return self.encoder(self.shared(input_ids), attention_mask)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        dtype: mx.Dtype = mx.float32,
        quantize: int | None = None,
        group_size: int = 64,
    ) -> T5Encoder:
        """Load a transformers T5 folder: ``config.json`` + ``model.safetensors`` or a sharded
        checkpoint (``model.safetensors.index.json``; only the shards holding encoder tensors are
        read, decoder-only shards need not be there). Decoder weights are skipped.

        Tensor by tensor, straight into ``dtype``: the peak is the encoder in ``dtype`` plus one
        tensor. ``quantize`` (8 or 4 bits) quantizes the linears and the token embedding as they
        load (MLX affine, groups of ``group_size``); float16 overflows in T5, prefer bfloat16.
        """
        from .checkpoint import stream_into

        folder = Path(folder)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"T5 config not found: {config_path}")
        config = T5Config.from_hf(read_json_object(config_path, "download it again"), source=str(config_path))
        if quantize is not None and quantize not in (4, 8):
            raise ValueError(f"T5 quantization must be 4 or 8 bits, got {quantize}")
        model = cls(config)  # lazy: never materialised, every parameter is replaced below
        sources = encoder_tensor_sources(folder)
        expected = {name: tuple(v.shape) for name, v in tree_flatten(model.parameters())}
        found = {name: shape for name, (_, _, shape) in sources.items()}
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{folder}: T5 weights do not match {config_path.name}; "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        wrong = [f"{k}: expected {expected[k]}, got {v}" for k, v in found.items() if v != expected[k]]
        if wrong:
            raise ValueError(f"{folder}: T5 weight shapes do not match {config_path.name}: {wrong}")
        quantize_now = lambda name: False  # noqa: E731
        if quantize is not None:
            nn.quantize(
                model,
                group_size=group_size,
                bits=quantize,
                class_predicate=lambda _, m: is_quantized_t5_module(m, group_size),
            )
            quantized = {f"{path}.weight" for path, m in model.named_modules() if hasattr(m, "scales")}
            quantize_now = quantized.__contains__
        for path in dict.fromkeys(file for file, _, _ in sources.values()):
            lazy = mx.load(str(path))  # nothing is read until a tensor is evaluated
            # largest first: the embedding's fp32 copy is converted while little else is resident
            names = sorted(
                (
                    (ours, theirs, math.prod(shape))
                    for ours, (file, theirs, shape) in sources.items()
                    if file == path
                ),
                key=lambda item: -item[2],
            )
            stream_into(model, ((ours, lazy.pop(theirs)) for ours, theirs, _ in names), dtype, quantize_now)
        return model


def is_quantized_t5_module(module: nn.Module, group_size: int) -> bool:
    """Linears and the token embedding whose rows split into whole groups (not the 32-wide
    relative position bias table)."""
    return isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.shape[-1] % group_size == 0


def encoder_tensor_sources(folder: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """Encoder parameter name -> (file, tensor name in that file, shape), from the headers only."""
    sources = {}
    for path in encoder_weight_files(folder):
        shapes = safetensors_shapes(read_safetensors_header(path))
        for ours, theirs in encoder_tensor_names(shapes).items():
            sources.setdefault(ours, (path, theirs, shapes[theirs]))
    return sources
