"""Model sources for PyTorch: resolve a folder, release name or Hub repo (starflow_core.sources)
and load each part of the pipeline as a torch module on `device`."""

from __future__ import annotations

import torch

from starflow_core.sources.hub import MissingModelFileError
from starflow_core.sources.pipeline_folder import PipelineParts
from starflow_core.sources.releases import RELEASES
from starflow_core.sources.resolve import resolve

from .model import StarFlow
from .text import TextEncoder, _tokenizer_class, load_t5_encoder
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
    parts: PipelineParts, dtype: torch.dtype | None = None, device: str = "cpu", strict: bool = False
) -> StarFlow:
    return StarFlow.from_pretrained(parts.transformer, dtype=dtype, strict=strict, device=device)


def load_vae(
    parts: PipelineParts, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> AutoencoderKL | None:
    return None if parts.vae is None else AutoencoderKL.from_pretrained(parts.vae, dtype=dtype).to(device)


def load_decoder(
    parts: PipelineParts, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> AutoencoderKL | None:
    """The VAE with the decoder fine-tuned on noisy latents: a VAE folder, or a weights file
    (official `pytorch_model.bin` naming) read into the pipeline's VAE architecture."""
    if parts.decoder is None:
        return None
    if parts.decoder.is_dir():
        return AutoencoderKL.from_pretrained(parts.decoder, dtype=dtype).to(device)
    return AutoencoderKL.from_pretrained(parts.vae, weights_file=parts.decoder, dtype=dtype).to(device)


def load_text_encoder(
    parts: PipelineParts, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> TextEncoder | None:
    if parts.text_encoder is None:
        return None
    tokenizer = _tokenizer_class().from_pretrained(parts.tokenizer)
    return TextEncoder(tokenizer, load_t5_encoder(parts.text_encoder, dtype, device))
