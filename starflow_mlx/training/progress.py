"""What a run shows while it trains: JSONL log, loss curve, sample grids."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from starflow_core.generation.images import to_uint8
from starflow_core.training.files import JsonlLog, grid, latent_preview, plot_loss_curve, save_png

from ..model import StarFlow

__all__ = ["JsonlLog", "grid", "plot_loss_curve", "sample_grid", "save_png", "to_uint8_images"]


def to_uint8_images(samples: mx.array, pixel_space: bool, vae=None) -> np.ndarray:
    """(B, H, W, C) samples -> (B, H, W, 3) uint8.

    Pixels in [-1, 1] map linearly; latents are decoded by the VAE when given, else their
    first three channels are shown, each image min-max normalised.
    """
    samples = samples.astype(mx.float32)
    if not pixel_space and vae is not None:
        samples = vae.decode(samples).astype(mx.float32)
        pixel_space = True
    if pixel_space:
        return to_uint8(np.array(samples))
    return latent_preview(np.array(samples).transpose(0, 3, 1, 2))


def sample_grid(
    model: StarFlow,
    conditions: mx.array | None,
    null_conditions: mx.array | None,
    count: int,
    rows: int,
    guidance: float,
    seed: int,
    pixel_space: bool,
    vae=None,
    frames: int = 0,
) -> np.ndarray:
    """Sample `count` images (or videos of `frames` frames, each a row of its frames) at the
    training resolution from fixed noise; one grid image."""
    config = model.config
    size = config.img_size
    shape = (count, frames) if frames else (count,)
    noise = mx.random.normal((*shape, size, size, config.in_channels), key=mx.random.key(seed))
    use_guidance = guidance if conditions is not None else 0.0
    samples = model.sample(noise, conditions, null_conditions, guidance=use_guidance)
    if frames:
        samples, rows = samples.reshape(count * frames, *samples.shape[2:]), count
    return grid(to_uint8_images(samples, pixel_space, vae), rows)
