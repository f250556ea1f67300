"""Model sources for MLX: resolve a folder, release name or Hub repo (starflow_core.sources)
and load each part of the pipeline as an MLX module."""

from __future__ import annotations

import mlx.core as mx

from starflow_core.sources.hub import MissingModelFileError
from starflow_core.sources.pipeline_folder import PipelineParts
from starflow_core.sources.releases import RELEASES
from starflow_core.sources.resolve import resolve

from .model import StarFlow
from .t5 import T5Encoder
from .text import SPIECE_NAME, T5Tokenizer, TextEncoder
from .vae import AutoencoderKL

__all__ = [
    "RELEASES",
    "MissingModelFileError",
    "load_decoder",
    "load_flow",
    "load_text_encoder",
    "load_vae",
    "resolve",
]


def load_flow(
    parts: PipelineParts,
    dtype: mx.Dtype | None = None,
    quantize: int | None = None,
    group_size: int = 64,
    strict: bool = False,
) -> StarFlow:
    return StarFlow.from_pretrained(
        parts.transformer, dtype=dtype, quantize=quantize, group_size=group_size, strict=strict
    )


def load_vae(parts: PipelineParts, dtype: mx.Dtype = mx.float32) -> AutoencoderKL | None:
    return None if parts.vae is None else AutoencoderKL.from_pretrained(parts.vae, dtype=dtype)


def load_decoder(parts: PipelineParts, dtype: mx.Dtype = mx.float32) -> AutoencoderKL | None:
    """The VAE with the decoder fine-tuned on noisy latents: a VAE folder, or a weights file
    (official `pytorch_model.bin` naming) read into the pipeline's VAE architecture."""
    if parts.decoder is None:
        return None
    if parts.decoder.is_dir():
        return AutoencoderKL.from_pretrained(parts.decoder, dtype=dtype)
    return AutoencoderKL.from_pretrained(parts.vae, weights_file=parts.decoder, dtype=dtype)


def load_text_encoder(
    parts: PipelineParts, dtype: mx.Dtype = mx.float32, quantize: int | None = None, group_size: int = 64
) -> TextEncoder | None:
    """T5 in `dtype` (quantized to `quantize` bits as it loads), read tensor by tensor."""
    if parts.text_encoder is None:
        return None
    tokenizer = T5Tokenizer(parts.tokenizer / SPIECE_NAME)
    encoder = T5Encoder.from_pretrained(
        parts.text_encoder, dtype=dtype, quantize=quantize, group_size=group_size
    )
    return TextEncoder(tokenizer, encoder)
