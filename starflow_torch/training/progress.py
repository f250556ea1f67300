"""What a run shows while it trains (main process only): JSONL log, loss curve, sample grids."""

from __future__ import annotations

import numpy as np
import torch

from starflow_core.generation.images import to_uint8
from starflow_core.training.files import JsonlLog, grid, latent_preview, plot_loss_curve, save_png

from ..model import StarFlow


def to_uint8_images(samples: torch.Tensor, pixel_space: bool, vae=None) -> np.ndarray:
    """(B, C, H, W) samples -> (B, H, W, 3) uint8.

    Pixels in [-1, 1] map linearly; latents are decoded by the VAE when given, else their
    first three channels are shown, each image min-max normalised.
    """
    samples = samples.float().cpu()
    if not pixel_space and vae is not None:
        samples = vae.decode(samples).float().cpu()
        pixel_space = True
    if pixel_space:
        return to_uint8(samples.permute(0, 2, 3, 1).numpy())
    return latent_preview(samples.numpy())


@torch.no_grad()
def sample_grid(
    model: StarFlow,
    conditions: torch.Tensor | None,
    null_conditions: torch.Tensor | None,
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
    noise = torch.randn(*shape, config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    y = conditions.to(device) if conditions is not None else None
    y_null = null_conditions.to(device) if null_conditions is not None else None
    use_guidance = guidance if y is not None else 0.0
    samples = model.sample(noise.to(device), y, y_null, guidance=use_guidance)
    if frames:
        samples, rows = samples.reshape(count * frames, *samples.shape[2:]), count
    return grid(to_uint8_images(samples, pixel_space, vae), rows)


__all__ = ["JsonlLog", "grid", "plot_loss_curve", "sample_grid", "save_png", "to_uint8_images"]
