"""End-to-end generation from tiny random pipeline folders, MLX twin against torch twin.

Tolerances: both twins run the same fp32 maths on the same numpy noise; they differ only
by float rounding in matmul/attention order, ~1e-6 here. We allow 1e-4 on latents and
1e-3 on decoded pixels in [-1, 1] (the VAE amplifies a little), and 1 level after
quantisation to uint8 (a value can sit on a rounding boundary).
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest

import starflow_mlx.pipeline as mlx_pipeline
import starflow_torch.pipeline as torch_pipeline
from starflow_core.generation.inputs import make_noise
from starflow_core.generation.settings import NonFiniteSampleError
from tests.helpers.tiny_pipeline import make_label_pipeline, make_nan_pipeline, make_tiny_pipeline

PROMPTS = ["a photo of a cat", "two dogs in the park"]
SEEDS = [0, 5]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pipeline")
    text = make_tiny_pipeline(root)
    return {"text": text, "labels": make_label_pipeline(root), "nan": make_nan_pipeline(text, root)}


@pytest.fixture(scope="module")
def twins(folders):
    return {
        kind: (
            mlx_pipeline.StarFlowPipeline.from_pretrained(folders[kind]),
            torch_pipeline.StarFlowPipeline.from_pretrained(folders[kind]),
        )
        for kind in ("text", "labels")
    }


def assert_twins_agree(mlx_result, torch_result):
    assert mlx_result.images.shape == torch_result.images.shape
    np.testing.assert_allclose(mlx_result.latents, torch_result.latents, atol=1e-4)
    np.testing.assert_allclose(mlx_result.images, torch_result.images, atol=1e-3)
    levels = np.abs(mlx_result.uint8().astype(int) - torch_result.uint8().astype(int))
    assert levels.max() <= 1
    assert mlx_result.steps == torch_result.steps


@pytest.mark.parametrize(
    "options",
    [{}, {"jacobi": True}, {"guidance": 0.0, "height": 16, "width": 24}],
    ids=["sequential-cfg", "jacobi-cfg", "no-cfg-3:2"],
)
def test_text_to_image_twins_agree(twins, options):
    mlx_pipe, torch_pipe = twins["text"]
    mlx_result = mlx_pipe.generate(PROMPTS, seeds=SEEDS, **options)
    torch_result = torch_pipe.generate(PROMPTS, seeds=SEEDS, **options)
    assert_twins_agree(mlx_result, torch_result)
    height, width = options.get("height", 16), options.get("width", 16)
    assert mlx_result.images.shape == (2, height, width, 3)
    assert mlx_result.denoise == "score"
    # not a trivial map: the two prompts/seeds give clearly different images
    assert np.abs(mlx_result.images[0] - mlx_result.images[1]).mean() > 1e-2


def test_prompt_and_guidance_change_the_image(twins):
    pipe = twins["text"][0]
    base = pipe.generate(PROMPTS[0], seeds=3)
    other_prompt = pipe.generate(PROMPTS[1], seeds=3)
    no_guidance = pipe.generate(PROMPTS[0], seeds=3, guidance=0.0)
    assert np.abs(base.latents - other_prompt.latents).max() > 1e-3
    assert np.abs(base.latents - no_guidance.latents).max() > 1e-3
    assert base.settings.guidance == 1.5  # the folder's default (model_index.json "sampling")


def test_seed_alone_determines_the_image(twins):
    pipe = twins["text"][0]
    batch = pipe.generate(PROMPTS, seeds=SEEDS, guidance=0.0)
    single = pipe.generate(PROMPTS[1], seeds=SEEDS[1], guidance=0.0)
    np.testing.assert_allclose(single.images[0], batch.images[1], atol=1e-5)
    noise = make_noise([5], 4, 8, 8)[0]
    np.testing.assert_array_equal(noise, np.random.default_rng(5).standard_normal((4, 8, 8), np.float32))


@pytest.mark.parametrize("twin", [0, 1], ids=["mlx", "torch"])
def test_the_flow_starts_from_numpys_normal_noise_per_seed(twins, twin, monkeypatch):
    """Both twins draw their noise through shared code, so twin parity cannot see a mistake there:
    compare what reaches the flow with numpy's generator directly (bit for bit), non-square."""
    pipe = twins["text"][twin]
    received = []
    sample_flow = type(pipe).sample_flow

    def spy(self, noise, *args, **kwargs):
        received.append(noise.numpy() if hasattr(noise, "detach") else np.array(noise))  # torch or MLX
        return sample_flow(self, noise, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "sample_flow", spy)
    pipe.generate(PROMPTS, seeds=SEEDS, height=16, width=24, guidance=0.0)
    noise = received[0] if twin == 1 else received[0].transpose(0, 3, 1, 2)  # MLX is NHWC
    channels, height, width = 4, 16 // 2, 24 // 2  # the tiny VAE downsamples by 2
    want = [
        np.random.default_rng(seed).standard_normal((channels, height, width), np.float32) for seed in SEEDS
    ]
    np.testing.assert_array_equal(noise, np.stack(want))


def test_label_pixel_model_twins_agree(twins):
    mlx_pipe, torch_pipe = twins["labels"]
    prompts = ["cat", "2", "Dog"]  # class names (any case) or indices
    mlx_result = mlx_pipe.generate(prompts, seeds=[1, 2, 3], jacobi=True)
    torch_result = torch_pipe.generate(prompts, seeds=[1, 2, 3], jacobi=True)
    assert_twins_agree(mlx_result, torch_result)
    assert mlx_result.images.shape == (3, 8, 8, 3)  # pixels: no VAE
    with pytest.raises(ValueError, match="not a class"):
        mlx_pipe.generate("zebra", seeds=0)


def test_denoising_modes(folders, twins):
    pipe = twins["text"][0]
    plain = pipe.generate(PROMPTS[0], seeds=1, denoise=False)
    scored = pipe.generate(PROMPTS[0], seeds=1)
    assert plain.denoise == "none"
    assert np.abs(plain.latents - scored.latents).max() > 1e-4
    # a "fine-tuned" decoder (here the same VAE) replaces score denoising: it decodes the noisy latents
    with_decoder = mlx_pipeline.StarFlowPipeline.from_pretrained(
        folders["text"], decoder=folders["text"] / "vae"
    )
    decoded = with_decoder.generate(PROMPTS[0], seeds=1)
    assert decoded.denoise == "decoder"
    np.testing.assert_allclose(decoded.images, plain.images, atol=1e-6)


@pytest.mark.parametrize("twin", [0, 1], ids=["mlx", "torch"])
def test_call_returns_pil_images_and_frees_t5_before_sampling(twins, twin, monkeypatch):
    """The T5 that the pipeline loads for a call is gone when the flow starts sampling: its
    weights were dropped (unload) and nothing holds the module any more (a weak reference dies)."""
    pipe = twins["text"][twin]
    hub = (mlx_pipeline if twin == 0 else torch_pipeline).hub
    loaded, seen_at_sampling = [], []
    load_text_encoder, sample_flow = hub.load_text_encoder, type(pipe).sample_flow

    def load_spy(*args, **kwargs):
        encoder = load_text_encoder(*args, **kwargs)
        loaded.append((encoder, weakref.ref(encoder.model)))  # the wrapper is kept here on purpose
        return encoder

    def sample_spy(self, *args, **kwargs):
        seen_at_sampling.extend((encoder.model, t5()) for encoder, t5 in loaded)
        return sample_flow(self, *args, **kwargs)

    monkeypatch.setattr(hub, "load_text_encoder", load_spy)
    monkeypatch.setattr(type(pipe), "sample_flow", sample_spy)
    images = pipe(PROMPTS, seeds=SEEDS, guidance=1.5)
    assert [image.size for image in images] == [(16, 16), (16, 16)]
    assert len(loaded) == 1  # one T5 per call, for the prompts and the empty prompt
    assert seen_at_sampling == [(None, None)]


def test_bad_sizes_are_refused(twins):
    pipe = twins["text"][0]
    with pytest.raises(ValueError, match="not a positive multiple of 2"):
        pipe.generate(PROMPTS[0], seeds=0, height=15)
    with pytest.raises(ValueError, match="3 prompts and 2 seeds"):
        pipe.generate(["a", "b", "c"], seeds=[1, 2])


def test_nan_weights_raise(folders):
    for module in (mlx_pipeline, torch_pipeline):
        pipe = module.StarFlowPipeline.from_pretrained(folders["nan"])
        with pytest.raises(NonFiniteSampleError, match="NaN"):
            pipe.generate(PROMPTS[0], seeds=0)
