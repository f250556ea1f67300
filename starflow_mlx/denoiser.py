"""The learned self-denoiser of STARFlow-V (official NonCausalBlock, `learnable_self_denoiser.*`).

Samples of a flow trained on noisy latents carry that noise (std noise_std). The video model
ships a small non-causal transformer that predicts it: 8 pre-norm layers over [text; tokens]
(text only with conditional_denoiser), a final RMSNorm and a linear head back to the token
width, no shift/scale split and no soft clip. In a video with temporal_causal the tokens
of frame f see the frames up to f + temporal_causal - 1, at most denoiser_window behind
(starflow_core.frames.denoiser_attention_mask); images see everything. The official sampler
moves a sample by DENOISER_STEP times the output, chunk by chunk (StarFlow.denoise_video).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from starflow_core.config import FlowConfig
from starflow_core.official.shapes import DENOISER_LAYERS

from .flow_block import Rope
from .layers import RMSNorm, TransformerLayer


class LearnedDenoiser(nn.Module):
    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.has_text = config.conditional_denoiser
        token_dim, channels = config.token_dim, config.channels
        self.proj_in = nn.Linear(token_dim, channels)
        if self.has_text:
            self.proj_txt = nn.Linear(config.txt_dim, channels)
        self.attn_blocks = [TransformerLayer(config) for _ in range(DENOISER_LAYERS)]
        if config.use_final_norm:
            self.final_norm = RMSNorm(channels)
        self.proj_out = nn.Linear(channels, token_dim)
        self.proj_out.weight = mx.zeros_like(self.proj_out.weight)  # a fresh denoiser predicts zero

    def __call__(
        self,
        tokens: mx.array,
        text: mx.array | None,
        rope: Rope | None,
        mask: mx.array | None,
        evaluate: bool = False,
    ) -> mx.array:
        """tokens (B, L, C') -> predicted noise direction (B, L, C'); text (B, txt_len, txt_dim)
        when conditional; mask (txt_len + L, txt_len + L) bool or None (all see all). A mask's
        attention runs in chunks of query rows (layers.attention_in_query_chunks), each evaluated
        before the next with evaluate (inference: not inside mx.compile)."""
        h = self.proj_in(tokens.astype(self.proj_in.weight.dtype))
        txt_len = 0
        if self.has_text:
            t = self.proj_txt(text.astype(self.proj_txt.weight.dtype))
            txt_len = t.shape[1]
            h = mx.concatenate([t, h], axis=1)
        for layer in self.attn_blocks:
            h = layer(h, rope, mask=mask, evaluate=evaluate)
        h = h[:, txt_len:]
        if self.config.use_final_norm:
            h = self.final_norm(h)
        return self.proj_out(h).astype(mx.float32)
