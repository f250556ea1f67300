"""Editing measures on the digits: inpainting, image-to-image and scoring with the demo model.

Framework-free; `pipe` is either twin's StarFlowPipeline of a digits model (8x8 grey,
class labels, "" = unconditional). Images are (N, 8, 8) in [-1, 1] as in starflow_core.digits;
the SVC trained on the real training digits (digits.fit_classifier) is the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from starflow_core.digits import classify

SIDE = 8


def bottom_half_mask() -> np.ndarray:
    """(8, 8) mask, 1 on the bottom four rows (regenerate), 0 on the top four (known)."""
    mask = np.zeros((SIDE, SIDE), np.float32)
    mask[SIDE // 2 :] = 1.0
    return mask


def _as_prompts(labels: Sequence[int] | None, count: int) -> list[str]:
    return [""] * count if labels is None else [str(int(label)) for label in labels]


def inpaint_bottom_halves(
    pipe: Any,
    images: np.ndarray,
    labels: Sequence[int] | None,
    seeds: Sequence[int],
    rounds: int | None = None,
    batch: int = 400,
) -> np.ndarray:
    """Regenerate the bottom half of each digit (N, 8, 8) under its label (None: ""), one seed
    each; returns the completed digits (N, 8, 8), unclipped (the top half is the input's)."""
    prompts = _as_prompts(labels, len(images))
    options = {} if rounds is None else {"inpaint_rounds": rounds}
    out = []
    for first in range(0, len(images), batch):
        part = slice(first, first + batch)
        result = pipe.generate(
            prompts[part],
            seeds=list(seeds[part]),
            image=images[part, ..., None],
            mask_image=bottom_half_mask(),
            **options,
        )
        out.append(result.images[..., 0])
    return np.concatenate(out)


def fill_with_samples(
    pipe: Any, images: np.ndarray, labels: Sequence[int] | None, seeds: Sequence[int], batch: int = 400
) -> np.ndarray:
    """The baseline: each hidden half filled with the bottom half of a plain sample (same
    condition and seed), the top half kept."""
    prompts = _as_prompts(labels, len(images))
    samples = np.concatenate(
        [
            pipe.generate(prompts[first : first + batch], seeds=list(seeds[first : first + batch])).images[
                ..., 0
            ]
            for first in range(0, len(images), batch)
        ]
    )
    return np.where(bottom_half_mask() > 0, samples, images)


def accuracy(classifier: Any, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(classify(classifier, np.clip(images, -1.0, 1.0)) == labels))


def image_to_image_sweep(
    pipe: Any,
    classifier: Any,
    images: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray,
    strengths: Sequence[float],
    seed: int,
    source_is_label: bool,
) -> list[dict[str, float]]:
    """Image-to-image of each digit toward another digit `targets`, for each strength: mean
    Euclidean distance to the input (pixels in [-1, 1]) and the share the classifier reads as
    the source digit and as the target. The inversion runs under the target (default) or,
    with `source_is_label`, under the true label."""
    rows = []
    seeds = list(range(seed, seed + len(images)))
    sources = [str(int(label)) for label in labels] if source_is_label else None
    for strength in strengths:
        result = pipe.generate(
            [str(int(t)) for t in targets],
            seeds=seeds,
            image=images[..., None],
            strength=float(strength),
            source_prompt=sources,
        )
        edited = result.images[..., 0]
        predicted = classify(classifier, np.clip(edited, -1.0, 1.0))
        rows.append(
            {
                "strength": float(strength),
                "distance_to_input": float(np.sqrt(((edited - images) ** 2).sum(axis=(1, 2))).mean()),
                "classified_as_source": float(np.mean(predicted == labels)),
                "classified_as_target": float(np.mean(predicted == targets)),
            }
        )
    return rows


def shuffle_pixels(images: np.ndarray, seed: int) -> np.ndarray:
    """Each digit's 64 pixels in a random order of its own: the same grey levels, no structure."""
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1)
    return np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(images.shape)


def bits_per_dim(pipe: Any, images: np.ndarray, labels: Sequence[int] | None) -> np.ndarray:
    """Exact bits/dim (N,) of clean digits (N, 8, 8) under their labels (None: "")."""
    return pipe.score(images[..., None], _as_prompts(labels, len(images)))


def share_above(higher: np.ndarray, lower: np.ndarray) -> float:
    """P(a random `higher` score > a random `lower` one): 1.0 = the two sets never overlap."""
    return float(np.mean(higher[:, None] > lower[None, :]))
