"""Pixels out: [-1, 1] floats to uint8, grids, PNG files with their generation parameters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.io import atomic_path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats (..., H, W, C) -> uint8 RGB (round half up after clipping, as torchvision's
    save_image); grey images (C = 1) are repeated to three channels."""
    pixels = np.clip((images.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


VIEWING_SIDE = 64  # images smaller than this are enlarged (nearest neighbour) when saved


def enlarge_for_viewing(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> enlarged by an integer factor so the shorter side is >= 64 px."""
    factor = -(-VIEWING_SIDE // min(pixels.shape[0], pixels.shape[1]))
    if factor <= 1:
        return pixels
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def png_metadata(values: dict[str, Any]):
    """PIL PngInfo with one tEXt chunk per entry (values converted with str)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in values.items():
        info.add_text(key, str(value))
    return info


def make_grid(images: Sequence[np.ndarray], cols: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) images of one size -> one grid (near-square unless cols), black padding."""
    count = len(images)
    cols = cols or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    height, width, channels = images[0].shape
    grid = np.zeros((rows * height, cols * width, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return grid


def save_png(path: Path, pixels: np.ndarray, metadata: dict[str, str]) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=png_metadata(metadata))
