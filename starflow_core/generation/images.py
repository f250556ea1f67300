"""Pixels out: [-1, 1] floats to uint8, grids, image files (PNG, JPEG, WebP) with their generation
parameters, and those parameters read back."""

from __future__ import annotations

import json
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


GRID_GAP = 4  # pixels between cells and around the grid, so neighbouring images never run together
GRID_BACKGROUND = (128, 128, 128)  # mid grey: visible against dark and light images alike
LABEL_WIDTH_MAX = 160  # pixels; longer row labels are cut with "..."


def make_grid(
    images: Sequence[np.ndarray],
    cols: int | None = None,
    labels: Sequence[str] | None = None,
    gap: int = GRID_GAP,
) -> np.ndarray:
    """uint8 (H, W, 3) images of one size -> one grid (near-square unless cols) with `gap` grey
    pixels between and around the cells; `labels` (one per row) are written in a strip on
    the left, e.g. each row's prompt."""
    count = len(images)
    cols = cols or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    if labels is not None and len(labels) != rows:
        raise ValueError(f"{len(labels)} row labels for a grid of {rows} rows")
    height, width, channels = images[0].shape
    strip = _label_strip(labels, height, gap) if labels else None
    left = strip.shape[1] if strip is not None else 0
    grid = np.empty((rows * (height + gap) + gap, left + cols * (width + gap) + gap, channels), np.uint8)
    grid[...] = np.array(GRID_BACKGROUND[:channels], dtype=np.uint8)
    if strip is not None:
        grid[:, :left] = strip[..., :channels]
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, start = gap + r * (height + gap), left + gap + c * (width + gap)
        grid[top : top + height, start : start + width] = image
    return grid


def _label_strip(labels: Sequence[str], cell_height: int, gap: int) -> np.ndarray:
    """A white strip (rows * (cell_height + gap) + gap high) with one label centred beside each row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, min(16, cell_height // 4)))
    texts = [_fit(str(label), font, LABEL_WIDTH_MAX) for label in labels]
    width = min(LABEL_WIDTH_MAX, max(int(font.getlength(text)) for text in texts)) + 2 * gap + 4
    height = len(labels) * (cell_height + gap) + gap
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for row, text in enumerate(texts):
        middle = gap + row * (cell_height + gap) + cell_height // 2
        draw.text((gap + 2, middle), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(strip)


def _fit(text: str, font, width: int) -> str:
    """`text`, or its longest prefix + "..." that is at most `width` pixels wide. Time linear in
    the text (a 100,000-character prompt): no glyph is narrower than a pixel, so at most `width`
    characters are measured, and the prefix is found by bisection."""
    if len(text) <= width and font.getlength(text) <= width:
        return text
    text = text[: width + 1]  # a longer text is cut anyway
    low, high = 0, len(text) + 1  # text[:low] + "..." fits; text[:high] + "..." (nearly always) not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if font.getlength(text[:middle] + "...") <= width else (low, middle)
    return text[:low] + "..."


def save_png(path: Path, pixels: np.ndarray, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        encode_image(tmp, pixels, metadata, "PNG")


EXIF_IMAGE_DESCRIPTION = 0x010E  # where JPEG and WebP files carry the metadata (as JSON)


def encode_image(path: Path, pixels: np.ndarray, metadata: dict[str, str], image_format: str) -> None:
    """Write uint8 pixels as PNG (one tEXt chunk per metadata entry), JPEG or WebP (quality 95;
    the entries as one JSON object in the EXIF image description, ASCII-escaped)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if image_format == "PNG":
        image.save(path, format="PNG", pnginfo=png_metadata(metadata))
        return
    exif = Image.Exif()
    exif[EXIF_IMAGE_DESCRIPTION] = json.dumps(metadata, ensure_ascii=True)
    image.save(path, format=image_format, quality=95, exif=exif)


def read_image_metadata(path: str | Path) -> dict[str, str]:
    """The metadata entries of an image written by `encode_image` ({} when it has none)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                return dict(getattr(image, "text", {}) or {})
            description = image.getexif().get(EXIF_IMAGE_DESCRIPTION)
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image PIL can read (PNG, JPEG or WebP)") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"image {path} is refused as a decompression bomb ({err})") from None
    if not description:
        return {}
    try:
        values = json.loads(description)
    except json.JSONDecodeError:
        return {}
    return {str(key): str(value) for key, value in values.items()} if isinstance(values, dict) else {}
