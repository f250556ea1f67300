"""Framework-free pieces of image generation shared by both twins' pipelines and CLIs.

Noise comes from numpy (one generator per seed, NCHW), so a seed gives the same
image in MLX and PyTorch and whatever else is in the batch. Sizes, prompts and
labels, pixel conversion, PNG metadata and output names live here too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Generation",
    "GenerationSettings",
    "NonFiniteSampleError",
    "aspect_ratio_size",
    "batch_prompts_and_seeds",
    "check_finite",
    "check_output_writable",
    "check_size",
    "make_noise",
    "png_metadata",
    "prompts_to_labels",
    "rank_share",
    "snap_size",
    "to_uint8",
]


class NonFiniteSampleError(ValueError):
    """A sample holds NaN or inf (broken weights, overflow in a low-precision dtype)."""


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """How to sample; `None` fields take the model's defaults (model_index.json "sampling")."""

    guidance: float = 0.0
    jacobi: bool = False
    block_size: int = 16
    tol: float = 1e-3
    max_iter: int = 32

    def __post_init__(self) -> None:
        if self.guidance < 0 or not math.isfinite(self.guidance):
            raise ValueError(f"guidance (cfg) must be a finite number >= 0, got {self.guidance}")
        if self.block_size < 1 or self.max_iter < 1:
            raise ValueError(
                f"block_size and max_iter must be >= 1, got {self.block_size} and {self.max_iter}"
            )
        if self.tol <= 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")

    def sampler_name(self) -> str:
        if not self.jacobi:
            return "sequential"
        return f"jacobi(block_size={self.block_size}, tol={self.tol:g}, max_iter={self.max_iter})"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; valid: {sorted(names)}")
        return cls(**values)

    def merged(self, **overrides: Any) -> GenerationSettings:
        """These settings with every override that is not None applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# ----- noise --------------------------------------------------------------------------
def make_noise(seeds: Sequence[int], channels: int, height: int, width: int) -> np.ndarray:
    """(B, C, H, W) float32 standard normal noise, row b drawn from default_rng(seeds[b])."""
    rows = []
    for seed in seeds:
        if int(seed) < 0:
            raise ValueError(f"seeds must be >= 0, got {seed}")
        rows.append(np.random.default_rng(int(seed)).standard_normal((channels, height, width), np.float32))
    return np.stack(rows)  # (B, C, H, W)


# ----- sizes --------------------------------------------------------------------------
def parse_aspect_ratio(ratio: str) -> float:
    try:
        width, height = (float(part) for part in ratio.split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio must look like W:H (e.g. 16:9), got {ratio!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"aspect ratio sides must be > 0, got {ratio!r}")
    return width / height


def _nearest_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def aspect_ratio_size(base: int, ratio: str, multiple: int) -> tuple[int, int]:
    """(height, width) with about the area base^2 and width/height = ratio, each a multiple
    of `multiple` (the official sampler's rule)."""
    r = parse_aspect_ratio(ratio)
    area = base * base
    return _nearest_multiple(math.sqrt(area / r), multiple), _nearest_multiple(math.sqrt(area * r), multiple)


def snap_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Round to the nearest valid size, warning when that changes the request."""
    snapped = _nearest_multiple(height, multiple), _nearest_multiple(width, multiple)
    if snapped != (height, width):
        warnings.warn(
            f"size {height}x{width} is not a multiple of {multiple}; using {snapped[0]}x{snapped[1]}",
            stacklevel=2,
        )
    return snapped


def check_size(height: int, width: int, multiple: int, why: str) -> None:
    """Raise a ValueError naming the nearest valid sizes if height or width is not a multiple."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            low = max(multiple, value // multiple * multiple)
            raise ValueError(
                f"{name} {value} is not a positive multiple of {multiple} ({why}); "
                f"use {low} or {low + multiple} (or --snap to round automatically)"
            )


# ----- prompts, seeds, labels ----------------------------------------------------------
def batch_prompts_and_seeds(
    prompts: str | Sequence[str], seeds: int | Sequence[int]
) -> tuple[list[str], list[int]]:
    """Pair prompts with seeds; a single prompt or a single seed is repeated to match the other."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
    if not prompts or not seeds:
        raise ValueError("need at least one prompt and one seed")
    if len(prompts) == 1:
        prompts = prompts * len(seeds)
    elif len(seeds) == 1:
        seeds = seeds * len(prompts)
    if len(prompts) != len(seeds):
        raise ValueError(
            f"got {len(prompts)} prompts and {len(seeds)} seeds; "
            "give one seed, one prompt, or as many of each"
        )
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {type(prompt).__name__} at index {index}")
    return prompts, seeds


def prompts_to_labels(prompts: Sequence[str], num_classes: int, names: Sequence[str] | None) -> list[int]:
    """Class labels from prompts: a class name (case-insensitive) or a number; "" is the null label -1."""
    lookup = {name.strip().lower(): index for index, name in enumerate(names or ())}
    labels = []
    for prompt in prompts:
        text = prompt.strip()
        if text == "":
            labels.append(-1)
        elif text.lower() in lookup:
            labels.append(lookup[text.lower()])
        elif text.lstrip("-").isdigit() and 0 <= int(text) < num_classes:
            labels.append(int(text))
        else:
            examples = ", ".join(list(names or ())[:5]) or "0, 1, 2"
            raise ValueError(
                f"{prompt!r} is not a class of this label-conditioned model; use a class index "
                f"0..{num_classes - 1}" + (f" or a class name (e.g. {examples})" if names else "")
            )
    return labels


def rank_share(items: Sequence[Any], rank: int, world_size: int) -> list[int]:
    """Indices of `items` that data-parallel rank `rank` of `world_size` handles (round robin)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(range(rank, len(items), world_size))


# ----- pixels ---------------------------------------------------------------------------
def check_finite(samples: np.ndarray, seeds: Sequence[int], what: str) -> None:
    bad = [seed for seed, row in zip(seeds, samples, strict=True) if not np.isfinite(row).all()]
    if bad:
        raise NonFiniteSampleError(
            f"{what} for seed(s) {bad} contain NaN or inf; nothing was written. Check the model weights "
            "(re-convert them) or use a wider --dtype (float32)"
        )


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


# ----- outputs --------------------------------------------------------------------------
def check_output_writable(directory: str | Path) -> Path:
    """Create `directory` if needed and prove that a file can be written there, before any compute."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".starflow-write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"cannot write to output directory {directory} ({err.strerror or err}); "
            "choose another --output or fix its permissions"
        ) from err
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"output directory {directory} is not writable; choose another --output")
    return directory


# ----- results ----------------------------------------------------------------------------
@dataclasses.dataclass
class Generation:
    """What one pipeline call produced; arrays are numpy float32, NHWC in both twins.

    `latents` are the flow's samples (after denoising when it ran); `images` the decoded
    pixels in [-1, 1] before quantisation to uint8.
    """

    model: str
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings
    height: int
    width: int
    denoise: str  # "score" | "decoder" | "none"
    steps: int
    latents: np.ndarray  # (B, h, w, C)
    images: np.ndarray  # (B, H, W, 3)

    def uint8(self) -> np.ndarray:
        return to_uint8(self.images)

    def metadata(self, index: int) -> dict[str, str]:
        """PNG tEXt entries describing image `index` (enough to reproduce it)."""
        from .pipeline_folder import package_version

        settings = self.settings
        return {
            "model": self.model,
            "prompt": self.prompts[index],
            "seed": str(self.seeds[index]),
            "cfg": f"{settings.guidance:g}",
            "sampler": settings.sampler_name(),
            "steps": str(self.steps),
            "height": str(self.height),
            "width": str(self.width),
            "denoise": self.denoise,
            "version": f"starflow-mlx {package_version()}",
        }

    def pil_images(self) -> list:
        from PIL import Image

        return [Image.fromarray(row) for row in self.uint8()]
