"""The scikit-learn digits as flow data, and the quality measures of the demo model.

Framework-free (numpy + scikit-learn): both twins and the examples share it. Images are
8x8 with grey levels 0..16; the flow sees them scaled to [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from starflow_core.presets import preset

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_LEVEL = 16  # load_digits grey levels are 0..16
LEVEL_STEP = 2.0 / MAX_LEVEL  # one grey level in model units ([-1, 1])


DIGITS_CONFIG = preset("digits")  # the embedded demo model


@dataclasses.dataclass(frozen=True)
class DigitsTraining:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    label_dropout: float = 0.1
    seed: int = 0


def learning_rate(step: int, settings: DigitsTraining) -> float:
    """Linear warmup, then cosine decay to min_lr."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


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


def fit_classifier(split: DigitsSplit):
    """An SVC on the 0..16 scale of the real training digits (the judge of generated digits)."""
    from sklearn.svm import SVC

    classifier = SVC(gamma=0.001, C=10.0)
    classifier.fit(to_levels(split.train_images).reshape(len(split.train_images), -1), split.train_labels)
    return classifier


def classify(classifier, images: np.ndarray) -> np.ndarray:
    return classifier.predict(to_levels(images).reshape(len(images), -1))


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


def write_demo_index(folder, guidance: float, name: str = "starflow-digits-demo") -> None:
    """model_index.json of the demo pipeline folder (a pixel model: transformer/ only)."""
    from pathlib import Path

    from starflow_core.generation.settings import GenerationSettings
    from starflow_core.io import atomic_write_json
    from starflow_core.sources.pipeline_folder import MODEL_INDEX, PipelineParts, model_index

    folder = Path(folder)
    parts = PipelineParts(
        name=name,
        transformer=folder / "transformer",
        sampling=GenerationSettings(guidance=guidance),
        labels=DIGIT_NAMES,
        default_prompts=tuple(DIGIT_NAMES),
    )
    atomic_write_json(folder / MODEL_INDEX, model_index(parts))
