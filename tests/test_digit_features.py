"""The digit stand-in for Inception (starflow_core/assets/digit_features): a judge of digits whose
feature distances rank real digits, destroyed digits and noise in that order."""

from __future__ import annotations

import numpy as np
import pytest

from starflow_core.digits import load_digits_split
from starflow_core.digits_editing import shuffle_pixels
from starflow_core.evaluation.digit_features import DigitFeatures
from starflow_core.evaluation.metrics import FeatureStatistics, frechet_distance
from starflow_core.generation.images import to_uint8


def test_the_shipped_extractor_recognises_held_out_digits_and_ranks_sets():
    features = DigitFeatures.load()
    split = load_digits_split(seed=0)
    held_out = to_uint8(split.test_images[..., None])
    pool, logits = features(held_out)
    assert pool.shape == (360, 64) and logits.shape == (360, 10)
    assert np.mean(logits.argmax(1) == split.test_labels) >= 0.95  # 97.2% when it was trained

    reference = FeatureStatistics.of(features(to_uint8(split.train_images[..., None]))[0])

    def fid(images: np.ndarray) -> float:
        return frechet_distance(FeatureStatistics.of(features(to_uint8(images[..., None]))[0]), reference)

    rng = np.random.default_rng(0)
    real = fid(split.test_images)
    shuffled = fid(shuffle_pixels(split.test_images, seed=0))  # the same grey levels, no digit
    noise = fid(np.clip(0.5 * rng.standard_normal(split.test_images.shape), -1, 1).astype(np.float32))
    assert real < shuffled < noise and real < 1.0, (real, shuffled, noise)


def test_the_extractor_refuses_images_it_cannot_judge():
    with pytest.raises(ValueError, match="8x8 digits only"):
        DigitFeatures.load()(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        DigitFeatures.load()(np.zeros((2, 8, 8, 3), np.float32))
