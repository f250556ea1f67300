"""Bounds on what one generate command may ask for, checked before any weights load.

A typo should fail in a second with a message, not run for minutes or die allocating:
`--aspect-ratio 1000000:1` (a 2 x 8000 image), `--height 100000` (a 37 GiB noise array),
a 200,000-line prompt file times 8 seeds. Each bound names its override.
"""

from __future__ import annotations

MAX_IMAGES = 10_000  # per command, unless --max-images says otherwise
MAX_SIDE_FACTOR = 4  # sides up to 4x the training size, unless --no-size-limit


def check_image_count(prompts: int, seeds: int, limit: int) -> None:
    if limit < 1:
        raise ValueError(f"--max-images must be >= 1, got {limit}")
    count = prompts * seeds
    if count > limit:
        raise ValueError(
            f"this would make {count:,} images ({prompts:,} prompt(s) x {seeds:,} seed(s)), more than "
            f"--max-images {limit:,}; pass --max-images {count} to allow it, or split the prompt file"
        )


def check_size_limit(height: int, width: int, trained: int, unlimited: bool) -> None:
    """Refuse sides beyond MAX_SIDE_FACTOR x the training size (sampling cost grows with the
    square of the token count) unless `unlimited`."""
    limit = MAX_SIDE_FACTOR * trained
    if unlimited or (height <= limit and width <= limit):
        return
    raise ValueError(
        f"{height}x{width} is more than {MAX_SIDE_FACTOR}x the size this model was trained at "
        f"({trained}x{trained}; sides up to {limit}); time and memory grow with the square of the "
        "pixel count. Pass --no-size-limit to try anyway"
    )
