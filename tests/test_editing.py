"""Image-to-image and inpainting through the pipelines, every model family, both twins.

Families: text (latent, tiny VAE + T5), class labels (STARFlow on pixels), unconditional
(latent, VAE with scaling factor 1) and TARFlow (class labels on pixels, no sos).

Tolerances: the flow round trip (strength 0) is float32 arithmetic through every block,
1e-4 as in test_flow_properties, except the text pipeline: its random flow sees latents of
scale 0.2 from the tiny VAE (scaling factor 0.18), where it stretches by ~10x and its inverse
amplifies float32 rounding to ~2e-3 (measured; float64 weights do not help because the
flow arithmetic is fp32 by design), so 1e-2 there. Strength 1 and the known region of an
inpainting are exact by construction (bit for bit). Twins: 1e-4 on latents, 1e-3 on pixels
(test_pipeline's tolerances for the same maths on different kernels).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import starflow_mlx.pipeline as mlx_pipeline
import starflow_torch.pipeline as torch_pipeline
from starflow_core.generation.editing import mix_noise, round_noise
from tests.helpers.tiny_pipeline import (
    make_label_pipeline,
    make_tarflow_pipeline,
    make_tiny_pipeline,
    make_unconditional_pipeline,
)

FAMILIES = ("text", "labels", "unconditional", "tarflow")
PROMPTS = {
    "text": ["a photo of a cat", "two dogs in the park"],
    "labels": ["cat", "bird"],
    "unconditional": ["", ""],
    "tarflow": ["cat", "dog"],
}
SEEDS = [3, 4]
ROUND_TRIP_TOLERANCE = {"text": 1e-2, "labels": 1e-4, "unconditional": 1e-4, "tarflow": 1e-4}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    folders = {
        "text": make_tiny_pipeline(root),
        "labels": make_label_pipeline(root),
        "unconditional": make_unconditional_pipeline(root),
        "tarflow": make_tarflow_pipeline(root),
    }
    return {
        kind: (
            mlx_pipeline.StarFlowPipeline.from_pretrained(folder),
            torch_pipeline.StarFlowPipeline.from_pretrained(folder),
        )
        for kind, folder in folders.items()
    }


def input_images(pipe, count: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth random images in [-1, 1] (B, H, W, C) at the pipeline's default size."""
    rng = np.random.default_rng(seed)
    size = pipe.default_size
    coarse = rng.uniform(-1, 1, (count, size // 2, size // 2, pipe.image_channels)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)


def bottom_half_mask(pipe) -> np.ndarray:
    mask = np.zeros((pipe.default_size, pipe.default_size), np.float32)
    mask[pipe.default_size // 2 :] = 1.0
    return mask


def encoded(pipe, images: np.ndarray) -> np.ndarray:
    return pipe.to_numpy(pipe.encode(pipe.from_numpy(images)))


@pytest.mark.parametrize("kind", FAMILIES)
def test_strength_zero_returns_the_input(pipes, kind):
    for pipe in pipes[kind]:
        images = input_images(pipe)
        result = pipe.generate(PROMPTS[kind], seeds=SEEDS, image=images, strength=0.0)
        assert result.denoise == "none"  # no score step on the input itself
        np.testing.assert_allclose(
            result.latents, encoded(pipe, images), atol=ROUND_TRIP_TOLERANCE[kind], rtol=0
        )
        if pipe.vae is None:  # pixel models: the image itself
            np.testing.assert_allclose(result.images, images, atol=1e-4, rtol=0)
        else:  # latent models: the VAE round trip of the image (1e-3: decoder of a 1e-4 latent error)
            reference = pipe.to_numpy(pipe.decode(pipe.from_numpy(encoded(pipe, images))))
            np.testing.assert_allclose(result.images, reference, atol=10 * ROUND_TRIP_TOLERANCE[kind], rtol=0)


@pytest.mark.parametrize("kind", FAMILIES)
def test_strength_one_is_plain_generation(pipes, kind):
    for pipe in pipes[kind]:
        plain = pipe.generate(PROMPTS[kind], seeds=SEEDS)
        edited = pipe.generate(PROMPTS[kind], seeds=SEEDS, image=input_images(pipe), strength=1.0)
        np.testing.assert_array_equal(edited.latents, plain.latents)  # same noise, same sampler: exact
        np.testing.assert_array_equal(edited.images, plain.images)
        assert edited.denoise == plain.denoise and edited.steps == plain.steps


@pytest.mark.parametrize("kind", ["labels", "unconditional"])
def test_distance_to_the_input_grows_with_strength(pipes, kind):
    pipe = pipes[kind][0]
    images = input_images(pipe, count=4, seed=1)
    target = encoded(pipe, images)
    prompts = PROMPTS[kind][:1] * 4
    distances = []
    for strength in (0.0, 0.3, 0.6, 0.9, 1.0):
        result = pipe.generate(prompts, seeds=[0, 1, 2, 3], image=images, strength=strength, denoise=False)
        distances.append(float(np.sqrt(((result.latents - target) ** 2).sum(axis=(1, 2, 3))).mean()))
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances


def test_noise_mix_keeps_a_standard_normal():
    rng = np.random.default_rng(0)
    inverted, fresh = rng.standard_normal((2, 400_000), dtype=np.float32)
    for strength in (0.3, 0.7):
        mixed = mix_noise(inverted, fresh, strength)
        # 400,000 samples: the variance's standard error is sqrt(2 / n) ~ 0.002, so 0.01 is 5 sigma
        assert abs(mixed.var() - 1.0) < 0.01 and abs(mixed.mean()) < 0.01
    np.testing.assert_array_equal(mix_noise(inverted, fresh, 0.0), inverted)
    np.testing.assert_array_equal(mix_noise(inverted, fresh, 1.0), fresh)
    # round 0 is the seed's own noise; later rounds draw other noise, per seed
    first, later = round_noise([5], 0, 2, 4, 4), round_noise([5], 1, 2, 4, 4)
    np.testing.assert_array_equal(
        first[0], np.random.default_rng(5).standard_normal((2, 4, 4), np.float32).transpose(1, 2, 0)
    )
    assert np.abs(first - later).max() > 0.1


def test_score_step_uses_the_strength_times_the_training_noise(pipes):
    """A Gaussian model's output at strength S carries training noise of std S * noise_std, so
    the Tweedie step uses that std (docs/editing.md): at S = 0.5 a quarter of the full step."""
    pipe = pipes["labels"][0]
    images = input_images(pipe)
    noisy = pipe.generate(PROMPTS["labels"], seeds=SEEDS, image=images, strength=0.5, denoise=False)
    denoised = pipe.generate(PROMPTS["labels"], seeds=SEEDS, image=images, strength=0.5)
    y, _ = pipe.conditions(PROMPTS["labels"], guided=False)
    expected = pipe.to_numpy(pipe.denoise(pipe.from_numpy(noisy.latents), y, 0.5 * pipe.config.noise_std))
    np.testing.assert_allclose(denoised.latents, expected, atol=1e-6, rtol=0)  # the same arithmetic
    assert np.abs(denoised.latents - noisy.latents).max() > 1e-5  # the step does something


@pytest.mark.parametrize("kind", FAMILIES)
def test_inpainting_keeps_the_known_region(pipes, kind):
    for pipe in pipes[kind]:
        images = input_images(pipe)
        mask = bottom_half_mask(pipe)
        result = pipe.generate(PROMPTS[kind], seeds=SEEDS, image=images, mask_image=mask, inpaint_rounds=2)
        # without the score step the pasted latents of every round are the result itself
        raw = pipe.generate(
            PROMPTS[kind], seeds=SEEDS, image=images, mask_image=mask, denoise=False, inpaint_rounds=1
        )
        half = pipe.default_size // 2
        np.testing.assert_array_equal(result.images[:, :half], images[:, :half])  # bit for bit
        latent_half = half // pipe.parts.vae_downsample
        for edited in (result, raw):
            np.testing.assert_array_equal(
                edited.latents[:, :latent_half], encoded(pipe, images)[:, :latent_half]
            )
        assert np.abs(result.images[:, half:] - images[:, half:]).mean() > 1e-2  # the rest is new
        assert result.edit["inpaint_rounds"] == 2 and result.edit["strength"] == 1.0  # numbers, not text


@pytest.mark.parametrize("kind", FAMILIES)
def test_twins_agree_on_edits(pipes, kind):
    mlx_pipe, torch_pipe = pipes[kind]
    images = input_images(mlx_pipe)
    for options in ({"strength": 0.6}, {"mask_image": bottom_half_mask(mlx_pipe), "inpaint_rounds": 2}):
        mlx_result = mlx_pipe.generate(PROMPTS[kind], seeds=SEEDS, image=images, **options)
        torch_result = torch_pipe.generate(PROMPTS[kind], seeds=SEEDS, image=images, **options)
        np.testing.assert_allclose(mlx_result.latents, torch_result.latents, atol=1e-4, rtol=0)
        np.testing.assert_allclose(mlx_result.images, torch_result.images, atol=1e-3, rtol=0)
        assert mlx_result.steps == torch_result.steps


def test_inpainting_rounds_and_strength(pipes):
    pipe = pipes["labels"][0]
    images, mask = input_images(pipe), bottom_half_mask(pipe)
    one = pipe.generate(PROMPTS["labels"], seeds=SEEDS, image=images, mask_image=mask, inpaint_rounds=1)
    three = pipe.generate(PROMPTS["labels"], seeds=SEEDS, image=images, mask_image=mask, inpaint_rounds=3)
    assert three.steps == 3 * one.steps  # one sampling pass per round
    assert np.abs(one.images - three.images).max() > 1e-3  # later rounds re-invert and redraw
    kept = pipe.generate(PROMPTS["labels"], seeds=SEEDS, image=images, mask_image=mask, strength=0.0)
    np.testing.assert_allclose(kept.images, images, atol=1e-4, rtol=0)  # strength 0: the input everywhere


def test_empty_and_full_masks(pipes):
    pipe = pipes["unconditional"][0]
    images = input_images(pipe)
    with pytest.warns(UserWarning, match="mask is empty"):
        empty = pipe.generate("", seeds=SEEDS, image=images, mask_image=np.zeros((16, 16)))
    np.testing.assert_array_equal(empty.images, images)  # the input, not even a VAE round trip
    assert empty.steps == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full mask is plain generation, without notes
        full = pipe.generate("", seeds=SEEDS, image=images, mask_image=np.ones((16, 16)))
    plain = pipe.generate("", seeds=SEEDS)
    np.testing.assert_array_equal(full.images, plain.images)


def test_a_full_mask_in_a_batch_of_masks_is_plain_generation(pipes):
    pipe = pipes["labels"][0]
    masks = np.stack([np.ones((8, 8)), bottom_half_mask(pipe)])
    mixed = pipe.generate(PROMPTS["labels"], seeds=SEEDS, image=input_images(pipe), mask_image=masks)
    plain = pipe.generate(PROMPTS["labels"][0], seeds=SEEDS[0])
    # later rounds leave the row alone; 1e-5: a batch of two against one (test_pipeline's seed test)
    np.testing.assert_allclose(mixed.images[0], plain.images[0], atol=1e-5, rtol=0)


def test_source_prompt_conditions_the_inversion(pipes):
    pipe = pipes["labels"][0]
    images = input_images(pipe)
    same = pipe.generate(["cat", "cat"], seeds=SEEDS, image=images, strength=0.0, source_prompt="cat")
    moved = pipe.generate(["cat", "cat"], seeds=SEEDS, image=images, strength=0.0, source_prompt="dog")
    np.testing.assert_allclose(same.images, images, atol=1e-4, rtol=0)
    assert np.abs(moved.images - images).max() > 1e-2  # T_cat(T_dog^-1(x)) is another image
    assert moved.edit["source_prompt"] == "dog"


def test_edit_arguments_need_an_image(pipes):
    pipe = pipes["labels"][0]
    for options in ({"mask_image": np.ones((8, 8))}, {"strength": 0.5}, {"source_prompt": "cat"}):
        with pytest.raises(ValueError, match="pass image="):
            pipe.generate("cat", seeds=0, **options)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        pipe.generate("cat", seeds=0, image=input_images(pipe, 1), strength=1.2)
