"""What goes into an edit: the input image, the inpainting mask and the strength, checked.

Images come as a file path, a PIL image or a numpy array (uint8 0..255, or float in [-1, 1]),
one for every job or one for all; masks likewise (white / 1 = regenerate). Everything is
returned as float32 numpy, NHWC images in [-1, 1] and (B, H, W) masks in {0, 1}, the same in
both twins. Fixable mismatches (mask size, grey levels in a mask, an RGBA file for an RGB
model) are fixed with one warning each; anything else is a ValueError naming the fix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.generation.images import VIEWING_SIDE
from starflow_core.validation import refuse_special_file

MASK_THRESHOLD = 0.5


# ----- strength ---------------------------------------------------------------------------
def check_strength(strength: float) -> float:
    """0 keeps the input, 1 regenerates it from fresh noise."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"strength must be in [0, 1] (0 keeps the image, 1 regenerates it), got {strength!r}"
        )
    return value


# ----- images -----------------------------------------------------------------------------
def _open_image(source: str | Path):
    from PIL import Image, UnidentifiedImageError

    path = Path(source)
    refuse_special_file(path, "the image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ValueError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"image {path} is refused as a decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: not a readable image file ({err})") from None


def _pil_to_array(image, mode: str, what: str) -> np.ndarray:
    """A PIL image -> uint8 (H, W, C) in `mode` ("L" or "RGB"), converting with a warning."""
    if image.mode != mode:
        from starflow_core.training.image_folders import UnreadableImageError, to_8bit

        try:  # as training reads images: 16-bit scaled, transparency onto white, 32-bit refused
            converted = to_8bit(image, 1 if mode == "L" else 3)
        except UnreadableImageError as err:
            raise ValueError(f"{what} {err}") from None
        except ValueError as err:
            raise ValueError(
                f"{what} has the PIL mode {image.mode!r}, which cannot be converted to {mode}"
            ) from err
        pixels = np.asarray(image)
        grey = image.mode == "RGB" and mode == "L" and (pixels == pixels[..., :1]).all()
        if not grey:  # an RGB file whose channels are equal (as grey images are saved) loses nothing
            warnings.warn(f"{what} is {image.mode}; converted to {mode} for this model", stacklevel=4)
        image = converted
    array = np.asarray(image)
    if array.dtype != np.uint8:  # 16-bit and float modes converted to L/RGB are uint8; guard anyway
        raise ValueError(f"{what} has {array.dtype} pixels; save it as an 8-bit PNG")
    return array[..., None] if array.ndim == 2 else array


# ----- images this tool enlarged for viewing ----------------------------------------------
def _blocks_shrunk(array: np.ndarray, factor: int) -> np.ndarray | None:
    """(H, W, ...) -> (H/f, W/f, ...) when every f x f block is one constant value, else None."""
    height, width = array.shape[:2]
    if factor < 2 or height % factor or width % factor:
        return None
    corners = array[::factor, ::factor]
    enlarged = np.repeat(np.repeat(corners, factor, axis=0), factor, axis=1)
    return corners if np.array_equal(enlarged, array) else None


def native_size(image) -> tuple[int, int] | None:
    """(height, width) a PIL image written by this tool says it was made at, from its
    "parameters" metadata (None for grids, other files and unreadable metadata)."""
    import json

    text = (getattr(image, "text", None) or {}).get("parameters") or image.info.get("parameters")
    if text is None and image.format in ("JPEG", "WEBP"):
        description = image.getexif().get(0x010E)  # EXIF image description (images.encode_image)
        try:
            text = json.loads(description).get("parameters") if description else None
        except (json.JSONDecodeError, AttributeError):
            text = None
    try:
        parameters = json.loads(text) if text else None
        if not isinstance(parameters, dict) or "prompts" in parameters:  # a grid has gaps between cells
            return None
        return int(parameters["height"]), int(parameters["width"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def undo_enlargement(array: np.ndarray, native: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    """An image this tool enlarged for viewing (nearest neighbour, by an integer factor) back to
    its pixels exactly: (array, factor), factor 1 when it is not such an image.

    With `native` (the size its metadata records) the factor is the ratio of the sides; without
    it, the largest factor f whose f x f blocks are all constant and that the viewing rule gives
    for the shrunk size (its shorter side times f first reaching 64)."""
    height, width = array.shape[:2]
    if native is not None:
        factor = height // native[0] if native[0] else 0
        if (native[0] * factor, native[1] * factor) == (height, width):
            shrunk = _blocks_shrunk(array, factor)
            if shrunk is not None:
                return shrunk, factor
        return array, 1
    for factor in range(min(height, width) // 2, 1, -1):
        if height % factor or width % factor:
            continue
        if -(-VIEWING_SIDE // min(height // factor, width // factor)) != factor:
            continue
        shrunk = _blocks_shrunk(array, factor)
        if shrunk is not None and shrunk.min() != shrunk.max():  # one flat colour says nothing
            return shrunk, factor
    return array, 1


def _array_to_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    """uint8 0..255 or float [-1, 1] -> float32 [-1, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 (0..255) or float in [-1, 1], got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or inf")
    if array.min() < -1.0 - 1e-6 or array.max() > 1.0 + 1e-6:  # 1e-6: float round-off of [-1, 1] data
        raise ValueError(
            f"{what} has values in [{array.min():g}, {array.max():g}]; float images must be in [-1, 1] "
            "(pass uint8 for 0..255)"
        )
    return np.clip(array, -1.0, 1.0)


def _resize(array: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    """float32 (H, W, C) -> (height, width, C), per channel with PIL."""
    from PIL import Image

    method = Image.Resampling.BICUBIC if resample == "bicubic" else Image.Resampling.BILINEAR
    channels = [
        np.asarray(Image.fromarray(array[..., c], mode="F").resize((width, height), method))
        for c in range(array.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def _as_list(value: Any) -> list:
    if isinstance(value, np.ndarray) and value.ndim == 4:
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def load_image(source: Any, channels: int, what: str = "image") -> np.ndarray:
    """One image (path, PIL image or numpy array) -> float32 (H, W, channels) in [-1, 1]."""
    if isinstance(source, (str, Path)):
        what = f"{what} {source}"
        source = _open_image(source)
    if hasattr(source, "convert") and hasattr(source, "mode"):  # a PIL image
        pixels = _pil_to_array(source, "L" if channels == 1 else "RGB", what)
        pixels, factor = undo_enlargement(pixels, native_size(source))
        if factor > 1:
            height, width = pixels.shape[:2]
            warnings.warn(
                f"{what} is {height}x{width} enlarged {factor}x for viewing; read at its own "
                f"{height}x{width} pixels",
                stacklevel=3,
            )
        return _array_to_unit_range(pixels, what)
    array = np.asarray(source)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] != channels:
        raise ValueError(
            f"{what} has shape {tuple(array.shape)}; this model takes (H, W, {channels}) images "
            f"({'grey' if channels == 1 else 'RGB'}, channels last)"
        )
    return _array_to_unit_range(array, what)


def prepare_images(
    images: Any, count: int, channels: int, size: tuple[int, int] | None, multiple: int
) -> np.ndarray:
    """One image for all `count` jobs or one per job -> float32 (count, H, W, C) in [-1, 1].

    `size` (height, width) resizes every image to it; None keeps the first image's size,
    rounded to a multiple of `multiple` (the model's size step). A resize is announced."""
    loaded = [load_image(image, channels) for image in _as_list(images)]
    if len(loaded) not in (1, count):
        raise ValueError(f"got {len(loaded)} images for {count} prompt/seed pairs; give one or {count}")
    if size is None:
        height, width = loaded[0].shape[:2]
        size = tuple(max(multiple, int(round(side / multiple)) * multiple) for side in (height, width))
    resized = []
    for index, image in enumerate(loaded):
        if image.shape[:2] != tuple(size):
            warnings.warn(
                f"image {index} is {image.shape[0]}x{image.shape[1]}; resized to {size[0]}x{size[1]} "
                f"(sides must be multiples of {multiple})",
                stacklevel=3,
            )
            image = np.clip(_resize(image, *size, "bicubic"), -1.0, 1.0)
        resized.append(image)
    batch = np.stack(resized)
    return np.broadcast_to(batch, (count, *batch.shape[1:])).copy() if len(resized) == 1 else batch


def describe_input(source: Any) -> str:
    """A short description for PNG metadata: the file name, or what kind of object it was."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (list, tuple)):
        return f"{len(source)} inputs"
    return "PIL image" if hasattr(source, "mode") else "array"


# ----- masks ------------------------------------------------------------------------------
def parse_mask_box(text: str) -> tuple[int, int, int, int]:
    """ "x0,y0,x1,y1" (pixels; x1, y1 exclusive) -> the four integers."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(
            f"--mask-box must be four integers x0,y0,x1,y1 (pixels, x1 and y1 exclusive), got {text!r}"
        )
    return values


def box_mask(box: Sequence[int], height: int, width: int) -> np.ndarray:
    """(height, width) float32 mask, 1 inside the box x0 <= x < x1, y0 <= y < y1."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"mask box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
            f"(the image is {width} wide, {height} high)"
        )
    mask = np.zeros((height, width), np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def load_mask(source: Any, what: str = "mask") -> np.ndarray:
    """One mask (path, PIL image, numpy array) -> float32 (H, W), not yet thresholded."""
    if isinstance(source, (str, Path)):
        what = f"{what} {source}"
        source = _open_image(source)
    if hasattr(source, "convert") and hasattr(source, "mode"):  # PIL: grey levels, white = 1
        return np.asarray(source.convert("L"), dtype=np.float32) / 255.0
    array = np.asarray(source)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{what} has shape {tuple(array.shape)}; a mask is (H, W) or (H, W, 1)")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool or np.issubdtype(array.dtype, np.number):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{what} holds NaN or inf")
        return array
    raise ValueError(f"{what} must be numeric (1 = regenerate, 0 = keep), got dtype {array.dtype}")


def prepare_masks(masks: Any, count: int, height: int, width: int) -> np.ndarray:
    """One mask for all jobs or one per job -> float32 (count, height, width) in {0, 1}.

    A mask of another size is resized to the image (bilinear); grey levels are thresholded
    at 0.5 (white = regenerate). Each is said once per call."""
    if isinstance(masks, np.ndarray) and masks.ndim == 3 and masks.shape[-1] != 1:
        masks = list(masks)  # (B, H, W)
    loaded = [load_mask(mask) for mask in _as_list(masks)]
    if len(loaded) not in (1, count):
        raise ValueError(f"got {len(loaded)} masks for {count} prompt/seed pairs; give one or {count}")
    resized, exactly = False, True
    for index, mask in enumerate(loaded):
        if mask.shape != (height, width):
            resized = True
            exact = mask.shape[0] % height == 0 and mask.shape[0] // height == mask.shape[1] / width
            shrunk = _blocks_shrunk(mask, mask.shape[0] // height) if exact else None
            if shrunk is not None:  # drawn on the image enlarged for viewing: its blocks, exactly
                loaded[index] = shrunk
                continue
            exactly = False
            loaded[index] = _resize(mask[..., None], height, width, "bilinear")[..., 0]
    if resized:
        how = " (one value per block of equal pixels, exactly)" if exactly else ""
        warnings.warn(f"the mask was resized to the image size {height}x{width}{how}", stacklevel=3)
    batch = np.stack(loaded)
    binary = (batch > MASK_THRESHOLD).astype(np.float32)
    if not np.isin(batch, (0.0, 1.0)).all():
        warnings.warn("the mask has grey levels; thresholded at 0.5 (white = regenerate)", stacklevel=3)
    return np.broadcast_to(binary, (count, height, width)).copy() if len(loaded) == 1 else binary


def latent_mask(masks: np.ndarray, factor: int) -> np.ndarray:
    """(B, H, W) pixel masks -> (B, H/f, W/f, 1): a latent pixel is regenerated if any of its f x f
    pixels is (so every masked pixel gets new content)."""
    batch, height, width = masks.shape
    cells = masks.reshape(batch, height // factor, factor, width // factor, factor)
    return cells.max(axis=(2, 4))[..., None]
