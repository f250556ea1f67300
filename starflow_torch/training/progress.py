"""What a run shows while it trains (main process only): JSONL log, loss curve, sample grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from starflow_convert.io import atomic_path

from ..model import StarFlow


class JsonlLog:
    """Append-only log, one JSON object per line; a resumed run drops lines past its step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and path.is_file():
            path.unlink()  # a fresh run in a used folder starts a fresh log

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the curve is a convenience; the JSONL log has the numbers
        return
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    if not records:
        return
    steps = [r["step"] for r in records]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, [r["loss"] for r in records], label="loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats / dim)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


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
        images = ((samples.clamp(-1, 1) + 1) * 127.5).round()
    else:
        channels = samples[:, :3]
        if channels.shape[1] < 3:
            channels = channels.repeat(1, 3, 1, 1)[:, :3]
        low = channels.amin(dim=(1, 2, 3), keepdim=True)
        high = channels.amax(dim=(1, 2, 3), keepdim=True)
        images = ((channels - low) / (high - low).clamp(min=1e-6) * 255).round()
    return images.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def grid(images: np.ndarray, rows: int) -> np.ndarray:
    """(B, H, W, 3) -> one (rows*H, cols*W, 3) image, row-major, 2 px gaps."""
    count, height, width, _ = images.shape
    cols = -(-count // rows)
    gap = 2
    canvas = np.zeros((rows * (height + gap) - gap, cols * (width + gap) - gap, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[
            r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width
        ] = image
    return canvas


def save_png(image: np.ndarray, path: Path, text: dict[str, str]) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)


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
) -> np.ndarray:
    """Sample `count` images at the training resolution from fixed noise; one grid image."""
    config = model.config
    size = config.img_size
    noise = torch.randn(count, config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    y = conditions.to(device) if conditions is not None else None
    y_null = null_conditions.to(device) if null_conditions is not None else None
    use_guidance = guidance if y is not None else 0.0
    samples = model.sample(noise.to(device), y, y_null, guidance=use_guidance)
    return grid(to_uint8_images(samples, pixel_space, vae), rows)
