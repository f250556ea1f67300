"""The scikit-learn digits as flow data, and the quality measures of the demo model.

Framework-free (numpy + scikit-learn): the examples and tests share it with either twin.
Images are 8x8 with grey levels 0..16; the flow sees them scaled to [-1, 1]. The model
is reached through a twin's `StarFlowPipeline` (the same calls in both), never directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_LEVEL = 16  # load_digits grey levels are 0..16
LEVEL_STEP = 2.0 / MAX_LEVEL  # one grey level in model units ([-1, 1])


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """Images (N, 8, 8) in [-1, 1] and labels (N,), split into train and held-out test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def to_model_units(levels: np.ndarray) -> np.ndarray:
    return (levels.astype(np.float32) / MAX_LEVEL) * 2.0 - 1.0


def to_levels(images: np.ndarray) -> np.ndarray:
    """[-1, 1] -> the 0..16 scale of load_digits (continuous, clipped)."""
    return np.clip((images + 1.0) * (MAX_LEVEL / 2.0), 0.0, MAX_LEVEL)


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """The 1,797 digits, stratified split with a fixed seed (the same split for training and evaluation)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = to_model_units(digits.images)  # (N, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    return DigitsSplit(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


# ----- quality measures ---------------------------------------------------------------------
def fit_classifier(split: DigitsSplit):
    """An SVC on the 0..16 scale of the real training digits (the judge of generated digits)."""
    from sklearn.svm import SVC

    classifier = SVC(gamma=0.001, C=10.0)
    classifier.fit(to_levels(split.train_images).reshape(len(split.train_images), -1), split.train_labels)
    return classifier


def classify(classifier, images: np.ndarray) -> np.ndarray:
    return classifier.predict(to_levels(images).reshape(len(images), -1))


def sample_classes(
    pipe: Any, per_class: int, guidance: float | None = None, first_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` digits of every class from a label pipeline (either twin's StarFlowPipeline,
    its default sampling: flow inverse, score denoising); guidance None is the model's default.
    Sample i (classes in order) uses seed first_seed + i. Returns (digits (N, 8, 8) clipped to
    [-1, 1], labels (N,))."""
    labels = np.repeat(np.arange(pipe.config.num_classes), per_class)
    seeds = list(range(first_seed, first_seed + len(labels)))
    result = pipe.generate([str(label) for label in labels], seeds=seeds, guidance=guidance)
    return np.clip(result.images[..., 0], -1.0, 1.0), labels  # (N, 8, 8): grey, one channel


def held_out_bits_per_dim(pipe: Any, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Mean exact bits/dim (model units) of images (N, 8, 8) with the training noise added, under
    the flow of either twin's pipeline (the continuous density the flow was trained on)."""
    rng = np.random.default_rng(seed)
    noisy = images + pipe.config.noise_std * rng.standard_normal(images.shape).astype(np.float32)
    x = pipe.noise_array(noisy[:, None])  # numpy (N, 1, 8, 8) -> the twin's layout, dtype, device
    bits = pipe.flow.bits_per_dim(x, pipe.label_array([int(label) for label in labels]))  # (N,)
    return float(np.mean(bits.tolist()))  # tolist: the same call for mx.array and torch.Tensor


def mean_pairwise_distance(images: np.ndarray, labels: np.ndarray) -> float:
    """Mean Euclidean distance between two different images of the same class, averaged over classes."""
    per_class = []
    for label in np.unique(labels):
        flat = images[labels == label].reshape(-1, images[0].size).astype(np.float64)
        if len(flat) < 2:
            continue
        squared = (flat**2).sum(1)
        distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * flat @ flat.T, 0.0))
        n = len(flat)
        per_class.append(distances.sum() / (n * (n - 1)))
    return float(np.mean(per_class))


def discrete_bits_per_dim(continuous_bpd: float) -> float:
    """Bits/dim of the 17-level data, approximating P(bin) by density x bin width (one grey level)."""
    return continuous_bpd - math.log2(LEVEL_STEP)
