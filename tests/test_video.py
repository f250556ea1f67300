"""STARFlow-V in both twins (SPEC section 9): the official video vectors, and each video option.

vectors/starflow_video: temporal_causal 2, frame-local shallow blocks, a 96-wide deep block
over 64-wide shallow ones, a text-conditioned learned denoiser with a frame window, 3 frames.
Tolerances are SPEC section 7's: z, log-det and the denoiser within 1e-4 of the array's
scale, samples within 1e-3 absolute (measured: z 3e-7, denoiser 6e-7 in MLX and 0 in torch,
sequential samples 4e-6, converged Jacobi 2e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_vectors, max_relative_error

import starflow_mlx
import starflow_torch

FORWARD_TOL = 1e-4
SAMPLE_TOL = 1e-3
CASE = FIXTURES / "starflow_video"


def to_mlx_video(array: np.ndarray):
    """(B, T, C, H, W) -> MLX (B, T, H, W, C); an image (B, C, H, W) -> (B, H, W, C)."""
    import mlx.core as mx

    order = (0, 1, 3, 4, 2) if array.ndim == 5 else (0, 2, 3, 1)
    return mx.array(np.ascontiguousarray(np.asarray(array).transpose(order)))


def from_mlx_video(array) -> np.ndarray:
    return np.asarray(array).transpose(0, 1, 4, 2, 3)


class Twin:
    """One twin's model on the vectors and its array conversions."""

    def __init__(self, name: str):
        self.name = name
        package = starflow_mlx if name == "mlx" else starflow_torch
        self.model = package.StarFlow.from_official(CASE / "official.pth", CASE / "config.json")
        self.config, self.io = load_vectors("starflow_video")

    def array(self, key: str):
        value = self.io[key]
        if self.name == "mlx":
            import mlx.core as mx

            return to_mlx_video(value) if value.ndim >= 4 else mx.array(value)
        return torch.from_numpy(value)

    def numpy(self, value) -> np.ndarray:
        if self.name == "mlx":
            return from_mlx_video(value) if value.ndim == 5 else np.asarray(value)
        return value.detach().numpy()

    def sample(self, noise: str, **options) -> np.ndarray:
        y, y_null = self.array("y"), self.array("y_null")
        if options.pop("guided", True):
            options.update(y_null=y_null, guidance=self.config["guidance"])
        return self.numpy(self.model.sample(self.array(noise), y, **options))


@pytest.fixture(scope="module", params=["mlx", "torch"])
def twin(request) -> Twin:
    return Twin(request.param)


def test_forward_and_learned_denoiser_reproduce_the_official_model(twin):
    z, logdet = twin.model(twin.array("x"), twin.array("y"))
    assert max_relative_error(twin.numpy(z), twin.io["z"]) < FORWARD_TOL
    assert max_relative_error(twin.numpy(logdet), twin.io["logdet"]) < FORWARD_TOL
    denoised = twin.model.learned_denoise(twin.array("x"), twin.array("y"))
    assert max_relative_error(twin.numpy(denoised), twin.io["denoiser"]) < FORWARD_TOL


def test_sequential_sampling_reproduces_the_official_samples(twin):
    np.testing.assert_allclose(twin.sample("noise", guided=False), twin.io["sample_cfg0"], atol=SAMPLE_TOL)
    np.testing.assert_allclose(twin.sample("noise"), twin.io["sample_cfg"], atol=SAMPLE_TOL)
    first = twin.array("first")
    np.testing.assert_allclose(
        twin.sample("noise_ti2v", first_frame=first), twin.io["sample_ti2v"], atol=SAMPLE_TOL
    )


def test_jacobi_sampling_follows_the_official_video_chunks(twin, monkeypatch):
    """Converged Jacobi equals the official samples; chunks of block_size up to the first frame's
    end, then of 4 x block_size (official Jacobi path), so the deep block's 3 x 64 tokens take
    17 + 8 chunks of 4 and 16 (image-to-video: the first frame is known, 1 + 8).

    tol bounds the squared relative change of one iteration: 1e-12 leaves ~3e-6 (measured),
    where the default 1e-3 would leave ~4e-2 on this random model."""
    package = starflow_mlx if twin.name == "mlx" else starflow_torch
    sampler, steps = package.sampling._BlockSampler, []
    step = sampler.step

    def recorded(self, first, length, read=None):
        if self.frames > 1:  # the deep block (the shallow ones are frame-local)
            steps.append((first, first if read is None else read))
        return step(self, first, length, read)

    monkeypatch.setattr(sampler, "step", recorded)
    stats = package.sampling.SamplingStats()
    options = dict(jacobi=True, block_size=4, tol=1e-12, max_iter=64)
    got = twin.sample("noise", stats=stats, **options)
    np.testing.assert_allclose(got, twin.io["sample_cfg"], atol=SAMPLE_TOL)
    deep = stats.jacobi_iterations[0]
    assert len(deep) == 25 and max(deep) < 64  # every chunk converged
    # a chunk past the first frame starts from the frame before: its first iteration reads the
    # inputs one frame (64 tokens) earlier, its later iterations its own
    starts = [
        call for call, before in zip(steps, [(None,), *steps[:-1]], strict=True) if call[0] != before[0]
    ]
    firsts = [*range(0, 68, 4), *range(68, 192, 16)]
    assert starts == [(first, first - 64 if first > 64 else first) for first in firsts]
    stats = package.sampling.SamplingStats()
    got = twin.sample("noise_ti2v", first_frame=twin.array("first"), stats=stats, **options)
    np.testing.assert_allclose(got, twin.io["sample_ti2v"], atol=SAMPLE_TOL)
    assert len(stats.jacobi_iterations[0]) == 9
