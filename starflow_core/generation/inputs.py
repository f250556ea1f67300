"""What goes into a generation: noise per seed, image sizes, prompts, seeds and labels.

Noise comes from numpy (one generator per seed, NCHW), so a seed gives the same image in
MLX and PyTorch whatever else is in the batch.
"""

from __future__ import annotations

import math
import numbers
import secrets
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


# ----- noise --------------------------------------------------------------------------
def make_noise(seeds: Sequence[int], channels: int, height: int, width: int) -> np.ndarray:
    """(B, C, H, W) float32 standard normal noise, row b drawn from default_rng(seeds[b])."""
    rows = []
    for seed in seeds:
        if int(seed) < 0:
            raise ValueError(f"seeds must be >= 0, got {seed}")
        rows.append(np.random.default_rng(int(seed)).standard_normal((channels, height, width), np.float32))
    return np.stack(rows)  # (B, C, H, W)


def draw_seeds(count: int) -> list[int]:
    """`count` seeds drawn at random (from the OS), in [0, 2^31): what runs without --seed use."""
    return [secrets.randbelow(2**31) for _ in range(count)]


# ----- sizes --------------------------------------------------------------------------
def parse_aspect_ratio(ratio: str) -> float:
    try:
        width, height = (float(part) for part in ratio.split(":"))
    except ValueError:
        raise ValueError(f"aspect ratio must look like W:H (e.g. 16:9), got {ratio!r}") from None
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        raise ValueError(f"aspect ratio sides must be finite numbers > 0 (e.g. 16:9), got {ratio!r}")
    quotient = width / height
    if not math.isfinite(quotient) or quotient <= 0 or not math.isfinite(1 / quotient):
        raise ValueError(
            f"aspect ratio {ratio!r} is W/H = {quotient:g}, which cannot make an image; use e.g. 16:9"
        )
    return quotient


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
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
        if value <= 0 or value % multiple:
            low = max(multiple, value // multiple * multiple)
            raise ValueError(
                f"{name} {value} is not a positive multiple of {multiple} ({why}); "
                f"use {low} or {low + multiple} (or --snap to round automatically)"
            )


# ----- prompts, seeds, labels ----------------------------------------------------------
def _is_seed(value: object) -> bool:
    """A whole number (Python or numpy), not a bool, float or string."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def batch_prompts_and_seeds(
    prompts: str | Sequence[str], seeds: int | Sequence[int]
) -> tuple[list[str], list[int]]:
    """Pair prompts with seeds; a single prompt or a single seed is repeated to match the other."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seeds] if _is_seed(seeds) else seeds
    if isinstance(seeds, str | bytes) or not all(_is_seed(s) for s in seeds):
        raise ValueError(f"seeds must be an integer or a list of integers, got {seeds!r:.80}")
    seeds = [int(s) for s in seeds]
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be >= 0, got {[s for s in seeds if s < 0]}")
    if not prompts or not seeds:
        raise ValueError("need at least one prompt and one seed")
    if len(prompts) == 1:
        prompts = prompts * len(seeds)
    elif len(seeds) == 1:
        seeds = seeds * len(prompts)
    if len(prompts) != len(seeds):
        raise ValueError(
            f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed, one prompt, or as many "
            f"of each (paired one to one), or n_images (--n-images) {len(seeds)} to make every prompt "
            "with every seed"
        )
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {type(prompt).__name__} at index {index}")
    return prompts, seeds


def combine_prompts_and_seeds(
    prompts: str | Sequence[str], seeds: int | Sequence[int], n_images: int | None = None
) -> tuple[list[str], list[int]]:
    """The (prompt, seed) of every image, one rule for the command line and the Python API:

    - without n_images, one to one: prompt i with seed i; a single prompt or a single seed is
      repeated to match the other (`a --seed 0 1 2`: three images of a; `a b c --seed 0`: three
      prompts with seed 0; `a b --seed 0 1`: a with 0, b with 1);
    - with n_images N, every prompt with the same N seeds: one seed S gives S, S+1, ..., S+N-1,
      or exactly N seeds are given (`a b --seed 0 --n-images 2`: a 0, a 1, b 0, b 1).
    """
    if n_images is None:
        return batch_prompts_and_seeds(prompts, seeds)
    if n_images < 1:
        raise ValueError(f"n_images (--n-images) must be >= 1, got {n_images}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) == 1:
        seeds = [seeds[0] + i for i in range(n_images)]
    elif len(seeds) != n_images:
        raise ValueError(f"n_images (--n-images) {n_images} disagrees with the {len(seeds)} seeds given")
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds]
    return batch_prompts_and_seeds([p for p, _ in pairs] or prompts, [s for _, s in pairs] or seeds)


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
                f"0..{num_classes - 1}"
                + (f" or a class name (e.g. {examples})" if names else "")
                + "; for text prompts use a text-to-image model (--model starflow-3b-t2i-256)"
            )
    return labels


def rank_share(items: Sequence[Any], rank: int, world_size: int) -> list[int]:
    """Indices of `items` that data-parallel rank `rank` of `world_size` handles (round robin)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(range(rank, len(items), world_size))


# ----- the command line's requests --------------------------------------------------------
def given_prompts(args: Any) -> bool:
    return bool(args.prompts or args.prompt or args.prompt_file)


def read_seeds(args: Any) -> list[int]:
    """The seeds given, or one drawn at random (said, so an image worth keeping can be made again)."""
    if args.n_images is not None and args.n_images < 1:
        raise ValueError(f"--n-images must be >= 1, got {args.n_images}")
    if args.seed:
        return list(args.seed)
    first = draw_seeds(1)[0]
    count = args.n_images or 1
    again = f"--seed {first}" + (f" --n-images {count}" if count > 1 else "")
    drawn = " ".join(str(first + i) for i in range(count))
    print(f"seed(s) drawn at random: {drawn} ({again} repeats them)")
    return [first]


def make_jobs(args: Any, prompts: list[str], seeds: list[int], defaults: bool) -> list:
    """(prompt, seed) of every image (starflow_core.generation.inputs.combine_prompts_and_seeds, as
    in the API); the model's default prompts, not given by the user, each take every seed."""
    n_images = args.n_images
    if n_images is None and defaults and len(seeds) > 1:
        n_images = len(seeds)
    return list(zip(*combine_prompts_and_seeds(prompts, seeds, n_images), strict=True))


def is_main_job(args: Any) -> bool:
    """No prompt, seed, image count or image given: the demo grid (scripts/demo.sh). Anything
    else without --model runs the demo model as any other model (one file per image, seeds
    drawn at random when none are given)."""
    asked = (args.prompts, args.prompt, args.prompt_file, args.seed, args.n_images, args.image)
    return not any(value not in (None, []) for value in asked)
