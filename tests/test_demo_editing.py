"""Inpainting and scoring with the shipped digits model: docs/editing.md on a small, fixed sample.

The bottom half of 50 held-out digits (the first 5 of each class in the test split) is
regenerated unconditioned (""), seeds 0..49, 4 rounds; the SVC trained on the real training
digits judges the completions. docs/editing_eval.json measures all 360 digits with 4 seeds.
Fixed seeds make the outcome repeatable; the margins are stated beside each assert.
"""

from __future__ import annotations

import numpy as np
import pytest

from starflow_core import digits_editing as measures
from starflow_core.digits import fit_classifier, load_digits_split, sample_classes
from starflow_core.sources.pipeline_folder import MODEL_INDEX
from starflow_core.sources.releases import DEMO_FOLDER, DEMO_NAME
from starflow_mlx.pipeline import StarFlowPipeline

pytestmark = pytest.mark.skipif(
    not (DEMO_FOLDER / MODEL_INDEX).is_file(),
    reason="demo model not packaged (starflow_core/assets/demo/README.md says how it is made)",
)
PER_CLASS = 5


def test_unconditioned_inpainting_beats_pasting_plain_samples():
    pipe = StarFlowPipeline.from_pretrained(DEMO_NAME)
    split = load_digits_split(seed=0)
    classifier = fit_classifier(split)
    picks = np.concatenate([np.flatnonzero(split.test_labels == digit)[:PER_CLASS] for digit in range(10)])
    images, labels = split.test_images[picks], split.test_labels[picks]
    seeds = list(range(len(picks)))
    completed = measures.inpaint_bottom_halves(pipe, images, None, seeds)
    baseline = measures.fill_with_samples(pipe, images, None, seeds)
    np.testing.assert_array_equal(completed[:, :4], images[:, :4])  # the known half, bit for bit
    inpainted, pasted = (
        measures.accuracy(classifier, completed, labels),
        measures.accuracy(classifier, baseline, labels),
    )
    # measured here: 0.68 inpainted (34 of 50) vs 0.48 pasted (24 of 50); the target is 60%
    # (30 of 50). Inpainting must also beat the baseline by 15 points (7.5 digits; measured 10)
    assert inpainted >= 0.6, (inpainted, pasted)
    assert inpainted >= pasted + 0.15, (inpainted, pasted)


def test_scoring_ranks_real_and_generated_digits_above_shuffled_ones():
    """Exact bits/dim under the true label: 50 held-out digits, 50 generated ones (5 per class)
    and the held-out digits with their pixels shuffled. docs/editing.md (360 each): real -0.74,
    generated -1.06, shuffled 22.6, and every shuffled digit scores above every other."""
    pipe = StarFlowPipeline.from_pretrained(DEMO_NAME)
    split = load_digits_split(seed=0)
    picks = np.concatenate([np.flatnonzero(split.test_labels == digit)[:PER_CLASS] for digit in range(10)])
    real, labels = split.test_images[picks], split.test_labels[picks]
    generated, generated_labels = sample_classes(pipe, PER_CLASS, first_seed=10_000)
    shuffled = measures.shuffle_pixels(real, 0)
    bits = {
        "real": measures.bits_per_dim(pipe, real, labels),
        "generated": measures.bits_per_dim(pipe, generated, generated_labels),
        "shuffled": measures.bits_per_dim(pipe, shuffled, labels),
    }
    # no overlap at all (measured on 360 each: P = 1.000), and the means far apart: the shuffled
    # digits lose structure, ~23 bits/dim more than real ones; 10 bits/dim leaves a wide margin
    assert bits["shuffled"].min() > max(bits["real"].max(), bits["generated"].max()), bits
    assert bits["shuffled"].mean() > bits["real"].mean() + 10, bits
    assert bits["shuffled"].mean() > bits["generated"].mean() + 10, bits
