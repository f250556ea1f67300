"""A digit feature extractor that stands in for Inception on the 8x8 scikit-learn digits.

Inception's features mean nothing on 8x8 grey digits, so the digits model is measured with a
small classifier of our own: a multi-layer perceptron (64 -> 128 -> 64 -> 10, ReLU) trained
by scikit-learn on the real training digits of the demo's split (starflow_core.digits). Its
last hidden layer (64 values) plays the part of Inception's pool3 features (FID, precision,
recall) and its output the part of Inception's logits (Inception Score). The weights ship in
starflow_core/assets/digit_features/weights.npz (rebuilt by examples/train_digit_features.py; numpy
forward pass, no framework).

Images come in as uint8 (N, 8, 8, C) (sample sets store RGB; the grey level is channel 0),
so real digits and samples go through the same 8-bit quantisation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

ASSET = Path(__file__).resolve().parents[1] / "assets" / "digit_features" / "weights.npz"
HIDDEN = (128, 64)
SIDE = 8


@dataclasses.dataclass(frozen=True)
class DigitFeatures:
    """The perceptron's weights: (in, out) matrices and biases, layer by layer."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    @classmethod
    def load(cls, path: Path = ASSET) -> DigitFeatures:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"no digit feature extractor at {path}; rebuild it with python examples/train_digit_features.py"
            )
        with np.load(path) as data:
            layers = len([k for k in data.files if k.startswith("weight_")])
            return cls(
                tuple(data[f"weight_{i}"] for i in range(layers)),
                tuple(data[f"bias_{i}"] for i in range(layers)),
            )

    def save(self, path: Path) -> None:
        arrays = {f"weight_{i}": w.astype(np.float32) for i, w in enumerate(self.weights)}
        arrays.update({f"bias_{i}": b.astype(np.float32) for i, b in enumerate(self.biases)})
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 8, 8, C) -> (features (N, 64), logits (N, 10)), float64."""
        x = to_inputs(images)
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            x = np.maximum(x @ weight + bias, 0.0)
        return x, x @ self.weights[-1] + self.biases[-1]


def to_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 8, 8, C) -> (N, 64) in [0, 1], the grey level of channel 0."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:3] != (SIDE, SIDE):
        raise ValueError(
            f"the digit features take uint8 images (N, {SIDE}, {SIDE}, C), got {images.shape} {images.dtype}; "
            "they measure 8x8 digits only (use --features inception for other images)"
        )
    return images[..., 0].reshape(len(images), -1).astype(np.float64) / 255.0


def train(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> DigitFeatures:
    """The recipe: scikit-learn's MLPClassifier (Adam, L2 1e-3, early stopping off) on uint8 digits."""
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(hidden_layer_sizes=HIDDEN, alpha=1e-3, max_iter=600, random_state=seed)
    classifier.fit(to_inputs(images), labels)
    return DigitFeatures(tuple(classifier.coefs_), tuple(classifier.intercepts_))
