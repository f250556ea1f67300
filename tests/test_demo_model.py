"""The embedded demo model (starflow_core/assets/demo): it loads in both twins, they sample
the same digits from the same noise, and its digits are recognisable.

Tolerance: samples 1e-3 absolute (fp32 kernels of two libraries differ in summation order;
a sample compounds that error through every block's inverse and the denoising step).
The accuracy floor (60%) is far below the measured quality (see examples/evaluate_digits.py)
so only a broken model fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from starflow_core.digits import fit_classifier, load_digits_split
from starflow_core.generation.inputs import make_noise
from starflow_core.sources.pipeline_folder import MODEL_INDEX
from starflow_mlx.demo import DEMO_FOLDER, class_accuracy, generate_digits, load_demo, sample_digits
from starflow_torch.model import StarFlow as TorchStarFlow

pytestmark = pytest.mark.skipif(
    not (DEMO_FOLDER / MODEL_INDEX).is_file(), reason="demo model not trained (examples/train_digits.py)"
)


def test_twins_sample_the_same_digits():
    model, index = load_demo()
    torch_model = TorchStarFlow.from_pretrained(DEMO_FOLDER / "transformer", dtype=torch.float32).eval()
    labels = np.array([3, 7, -1, 0])
    noise = make_noise([0, 1, 2, 3], 1, 8, 8)  # (B, 1, 8, 8)
    guidance = index["sampling"]["guidance"]
    got = sample_digits(model, labels, noise, guidance)

    y = torch.from_numpy(labels)
    x = torch_model.sample(torch.from_numpy(noise), y, guidance=guidance)
    want = torch_model.denoise(x, y).clamp(-1, 1)[:, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_generated_digits_are_recognisable():
    model, index = load_demo()
    classifier = fit_classifier(load_digits_split(seed=0))
    accuracy, digits, _ = class_accuracy(
        model, classifier, per_class=10, guidance=index["sampling"]["guidance"]
    )
    assert digits.shape == (100, 8, 8) and np.isfinite(digits).all()
    assert accuracy >= 0.6, f"only {accuracy:.0%} of generated digits are the requested class"


def test_generate_digits_writes_a_grid_with_metadata(tmp_path):
    from PIL import Image

    path = generate_digits(["7", "seven", ""], seeds=[0, 1], output=tmp_path / "grid.png")
    image = Image.open(path)
    assert image.size == (2 * 64, 3 * 64)
    assert '"seven"' in image.text["prompts"] and image.text["seeds"] == "[0, 1]"
    rows = np.asarray(image)
    np.testing.assert_array_equal(rows[:64], rows[64:128])  # "7" and "seven" are the same digit
