"""One autoregressive flow block (the official MetaBlock): a causal transformer over tokens.

A block sees tokens (B, T, C') in raster order, permutes them (identity or flip; in a
video with temporal_causal, a flip within each frame, frames in order: SPEC section 9),
and predicts for token t a shift and scale from the tokens before it (STARFlow
paper section 3.1, TARFlow section 2). Text tokens, when the block has them, come
first in the same causal sequence.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from starflow_core.config import FlowConfig

from .flow_math import scale_and_log_scale, to_noise
from .kv_cache import BlockCache
from .layers import RMSNorm, TransformerLayer

Rope = tuple[torch.Tensor, torch.Tensor]


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
            self.pos_embed = nn.Parameter(torch.randn(config.grid_size**2, channels) * 1e-2)
        if self.has_class_embed:
            self.class_embed = nn.Parameter(torch.randn(config.num_classes, 1, channels) * 1e-2)
        if config.sos:
            self.sos_embed = nn.Parameter(torch.randn(1, 1, token_dim))
        if self.has_text:
            self.proj_txt = nn.Linear(config.txt_dim, channels)
        self.attn_blocks = nn.ModuleList(
            TransformerLayer(self.layer_config) for _ in range(config.layers_per_block[index])
        )
        if config.use_final_norm:
            self.final_norm = RMSNorm(channels)
        self.proj_out = nn.Linear(channels, out_dim)
        nn.init.zeros_(self.proj_out.weight)  # a fresh flow is the identity map

    # ----- pieces shared by the forward pass and the samplers -------------------------
    def permute(self, tokens: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """Flip the token order (dim 1) if this block runs right to left, within each of the
        `frames` frames when temporal_causal (see FlowConfig.flip_groups); its own inverse."""
        if not self.flipped:
            return tokens
        groups = self.config.flip_groups(frames)
        B, T, C = tokens.shape
        return tokens.reshape(B, groups, T // groups, C).flip(2).reshape(B, T, C)

    def text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, txt_len, txt_dim) features -> (B, txt_len, C) tokens."""
        return self.proj_txt(text.to(self.proj_txt.weight.dtype))

    def embed(self, inputs: torch.Tensor, start: int, labels: torch.Tensor | None) -> torch.Tensor:
        """Embed input tokens (B, L, C') that sit at sequence positions start..start+L-1."""
        h = self.proj_in(inputs.to(self.proj_in.weight.dtype))
        if self.config.uses_pos_embed:
            pos_embed = self.pos_embed.flip(0) if self.flipped else self.pos_embed  # (T, C)
            h = h + pos_embed[start : start + inputs.shape[1]]
        if self.has_class_embed:
            h = h + self.class_embedding(labels, inputs.shape[0])
        return h

    def class_embedding(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """TARFlow class embedding (B, 1, C); label None or < 0 selects the null class (the mean)."""
        null = self.class_embed.mean(dim=0)  # (1, C)
        if labels is None:
            return null.expand(batch, 1, -1)
        is_null = (labels < 0).view(-1, 1, 1)
        picked = self.class_embed[labels.clamp(min=0)]  # (B, 1, C)
        return torch.where(is_null, null.expand_as(picked), picked)

    def trunk(
        self,
        h: torch.Tensor,
        rope: Rope | None,
        cache: BlockCache | None = None,
        query_scale: torch.Tensor | None = None,
        recompute: bool = False,
    ) -> torch.Tensor:
        """recompute: a gradient through the trunk keeps each layer's input only and recomputes
        that layer's activations in the backward pass (one layer's activations at a time)."""
        for i, layer in enumerate(self.attn_blocks):
            if recompute:
                h = torch.utils.checkpoint.checkpoint(layer, h, rope, recompute=True, use_reentrant=False)
            else:
                h = layer(h, rope, cache.layers[i] if cache is not None else None, query_scale)
        return h

    def head(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk output (B, L, C) -> raw scale a and shift b, each (B, L, C'), fp32."""
        if self.config.use_final_norm:
            h = self.final_norm(h)
        out = self.proj_out(h)
        if self.config.soft_clip > 0:
            out = self.config.soft_clip * torch.tanh(out / self.config.soft_clip)
        out = out.float()
        if not self.config.nvp:
            return torch.zeros_like(out), out
        raw_scale, shift = out.chunk(2, dim=-1)
        return raw_scale, shift

    def sequence_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inputs of the causal sequence: with sos [sos, x_0..x_{T-2}], without it x itself."""
        if not self.config.sos:
            return tokens
        sos = self.sos_embed.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([sos, tokens[:, :-1]], dim=1)

    def predict(
        self,
        tokens: torch.Tensor,
        text: torch.Tensor | None,
        rope: Rope | None,
        labels: torch.Tensor | None = None,
        query_scale: torch.Tensor | None = None,
        recompute: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Permuted tokens (B, T, C') -> raw scale a and shift b for every token, same order.

        Without sos, position 0 gets a = b = 0: the first token passes unchanged. query_scale
        (B, 1, 1, 1) scales the attention logits per row (attn_temp, see sampling.py).
        """
        h = self.embed(self.sequence_inputs(tokens), 0, labels)
        txt_len = 0
        if self.has_text:
            t = self.text_tokens(text)
            txt_len = t.shape[1]
            h = torch.cat([t, h], dim=1)
        h = self.trunk(h, rope, query_scale=query_scale, recompute=recompute)[:, txt_len:]
        raw_scale, shift = self.head(h)
        if not self.config.sos:  # output t predicts token t+1
            raw_scale = torch.cat([torch.zeros_like(raw_scale[:, :1]), raw_scale[:, :-1]], dim=1)
            shift = torch.cat([torch.zeros_like(shift[:, :1]), shift[:, :-1]], dim=1)
        return raw_scale, shift

    # ----- data -> noise ----------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        text: torch.Tensor | None,
        rope: Rope | None,
        labels: torch.Tensor | None = None,
        recompute: bool = False,
        frames: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, C') in raster order, `frames` frames -> (noise tokens (B, T, C') raster
        order, log-det (B,))."""
        permuted = self.permute(tokens, frames)
        raw_scale, shift = self.predict(permuted, text, rope, labels, recompute=recompute)
        scale, log_scale = scale_and_log_scale(raw_scale, self.config.use_softplus)
        noise = to_noise(permuted, shift, scale).to(tokens.dtype)
        return self.permute(noise, frames), -log_scale.sum(dim=(1, 2))
