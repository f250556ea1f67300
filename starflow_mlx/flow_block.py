"""One autoregressive flow block (the official MetaBlock): a causal transformer over tokens.

A block sees tokens (B, T, C') in raster order, permutes them (identity or flip; in a
video with temporal_causal, a flip within each frame, frames in order: SPEC section 9),
and predicts for token t a shift and scale from the tokens before it (STARFlow
paper section 3.1, TARFlow section 2). Text tokens, when the block has them, come
first in the same causal sequence.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn

from starflow_core.config import FlowConfig

from .flow_math import scale_and_log_scale, to_noise
from .kv_cache import BlockCache
from .layers import RMSNorm, TransformerLayer

Rope = tuple[mx.array, mx.array]


class FlowBlock(nn.Module):
    def __init__(self, config: FlowConfig, index: int):
        super().__init__()
        self.config = config
        self.index = index
        self.flipped = config.block_is_flipped(index)
        self.has_text = config.block_has_text(index)
        self.has_class_embed = config.family == "tarflow" and config.num_classes > 0
        self.layer_config = config.layer_config(index)  # the deep block may be wider
        token_dim, channels = config.token_dim, self.layer_config.channels
        out_dim = 2 * token_dim if config.nvp else token_dim

        self.proj_in = nn.Linear(token_dim, channels)
        if config.uses_pos_embed:
            self.pos_embed = mx.random.normal((config.grid_size**2, channels)) * 1e-2
        if self.has_class_embed:
            self.class_embed = mx.random.normal((config.num_classes, 1, channels)) * 1e-2
        if config.sos:
            self.sos_embed = mx.random.normal((1, 1, token_dim))
        if self.has_text:
            self.proj_txt = nn.Linear(config.txt_dim, channels)
        self.attn_blocks = [
            TransformerLayer(self.layer_config) for _ in range(config.layers_per_block[index])
        ]
        if config.use_final_norm:
            self.final_norm = RMSNorm(channels)
        self.proj_out = nn.Linear(channels, out_dim)
        self.proj_out.weight = mx.zeros_like(self.proj_out.weight)  # a fresh flow is the identity map

    # ----- pieces shared by the forward pass and the samplers -------------------------
    def permute(self, tokens: mx.array, frames: int = 1) -> mx.array:
        """Flip the token order (axis 1) if this block runs right to left, within each of the
        `frames` frames when temporal_causal (see FlowConfig.flip_groups); its own inverse."""
        if not self.flipped:
            return tokens
        groups = self.config.flip_groups(frames)
        B, T, C = tokens.shape
        return tokens.reshape(B, groups, T // groups, C)[:, :, ::-1].reshape(B, T, C)

    def text_tokens(self, text: mx.array) -> mx.array:
        """(B, txt_len, txt_dim) features -> (B, txt_len, C) tokens."""
        return self.proj_txt(text.astype(self.proj_txt.weight.dtype))

    def embed(self, inputs: mx.array, start: int | mx.array, labels: mx.array | None) -> mx.array:
        """Embed input tokens (B, L, C') that sit at sequence positions start..start+L-1.

        start may be an int32 array so a compiled sampling step can take it as an input.
        """
        h = self.proj_in(inputs.astype(self.proj_in.weight.dtype))
        if self.config.uses_pos_embed:
            pos_embed = self.pos_embed[::-1] if self.flipped else self.pos_embed  # (T, C)
            start = mx.array(start, dtype=mx.int32)
            h = h + mx.slice(pos_embed, start, axes=(0,), slice_size=(inputs.shape[1], pos_embed.shape[1]))
        if self.has_class_embed:
            h = h + self.class_embedding(labels, inputs.shape[0])
        return h

    def class_embedding(self, labels: mx.array | None, batch: int) -> mx.array:
        """TARFlow class embedding (B, 1, C); label None or < 0 selects the null class (the mean)."""
        null = mx.mean(self.class_embed, axis=0)  # (1, C)
        if labels is None:
            return mx.broadcast_to(null, (batch, 1, null.shape[-1]))
        picked = self.class_embed[mx.maximum(labels, 0)]  # (B, 1, C)
        return mx.where((labels < 0).reshape(-1, 1, 1), null, picked)

    def trunk(
        self,
        h: mx.array,
        rope: Rope | None,
        cache: BlockCache | None = None,
        query_scale: mx.array | None = None,
        recompute: bool = False,
    ) -> mx.array:
        """recompute: a gradient through the trunk keeps each layer's input only and recomputes
        that layer's activations in the backward pass (one layer's activations at a time)."""
        for i, layer in enumerate(self.attn_blocks):
            if recompute:
                h = mx.checkpoint(functools.partial(layer, rope=rope, recompute=True))(h)
            else:
                h = layer(h, rope, cache.layers[i] if cache is not None else None, query_scale)
        return h

    def head(self, h: mx.array) -> tuple[mx.array, mx.array]:
        """Trunk output (B, L, C) -> raw scale a and shift b, each (B, L, C'), fp32."""
        if self.config.use_final_norm:
            h = self.final_norm(h)
        out = self.proj_out(h)
        if self.config.soft_clip > 0:
            out = self.config.soft_clip * mx.tanh(out / self.config.soft_clip)
        out = out.astype(mx.float32)
        if not self.config.nvp:
            return mx.zeros_like(out), out
        raw_scale, shift = mx.split(out, 2, axis=-1)
        return raw_scale, shift

    def sequence_inputs(self, tokens: mx.array) -> mx.array:
        """Inputs of the causal sequence: with sos [sos, x_0..x_{T-2}], without it x itself."""
        if not self.config.sos:
            return tokens
        sos = mx.broadcast_to(self.sos_embed.astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[2]))
        return mx.concatenate([sos, tokens[:, :-1]], axis=1)

    def predict(
        self,
        tokens: mx.array,
        text: mx.array | None,
        rope: Rope | None,
        labels: mx.array | None = None,
        query_scale: mx.array | None = None,
        recompute: bool = False,
    ) -> tuple[mx.array, mx.array]:
        """Permuted tokens (B, T, C') -> raw scale a and shift b for every token, same order.

        Without sos, position 0 gets a = b = 0: the first token passes unchanged. query_scale
        (B, 1, 1, 1) scales the attention logits per row (attn_temp, see sampling.py).
        """
        h = self.embed(self.sequence_inputs(tokens), 0, labels)
        txt_len = 0
        if self.has_text:
            t = self.text_tokens(text)
            txt_len = t.shape[1]
            h = mx.concatenate([t, h], axis=1)
        h = self.trunk(h, rope, query_scale=query_scale, recompute=recompute)[:, txt_len:]
        raw_scale, shift = self.head(h)
        if not self.config.sos:  # output t predicts token t+1
            raw_scale = mx.concatenate([mx.zeros_like(raw_scale[:, :1]), raw_scale[:, :-1]], axis=1)
            shift = mx.concatenate([mx.zeros_like(shift[:, :1]), shift[:, :-1]], axis=1)
        return raw_scale, shift

    # ----- data -> noise ----------------------------------------------------------------
    def __call__(
        self,
        tokens: mx.array,
        text: mx.array | None,
        rope: Rope | None,
        labels: mx.array | None = None,
        recompute: bool = False,
        frames: int = 1,
    ) -> tuple[mx.array, mx.array]:
        """tokens (B, T, C') in raster order, `frames` frames -> (noise tokens (B, T, C') raster
        order, log-det (B,))."""
        permuted = self.permute(tokens, frames)
        raw_scale, shift = self.predict(permuted, text, rope, labels, recompute=recompute)
        scale, log_scale = scale_and_log_scale(raw_scale, self.config.use_softplus)
        noise = to_noise(permuted, shift, scale).astype(tokens.dtype)
        return self.permute(noise, frames), -mx.sum(log_scale, axis=(1, 2))
