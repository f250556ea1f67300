"""Exact log-likelihood of images under a pipeline's flow (framework-free half of scoring).

What is measured: the flow's exact density (change of variables, no bound) of the data it
models. Pixel models: the image's pixels in [-1, 1]. Latent models: the VAE latent of the
image (posterior mean x scaling factor), under the flow's model of latents plus its training
noise N(0, noise_std^2) (the flow was trained on noisy latents, so its density is that of
the smoothed latent distribution, evaluated here at the clean latent). Bits per dimension are
-log2 p / (number of values the flow sees); continuous densities can make them negative.
Conditioned on a prompt or class (no guidance: p(x | y) itself); "" is the null condition.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from starflow_core.generation.edit_inputs import prepare_images


@dataclasses.dataclass(frozen=True)
class Scores:
    log_prob: np.ndarray  # (B,) nats, float64
    dims: np.ndarray  # (B,) values per image the flow sees (latent or pixel)
    prompts: list[str]
    measured: str  # one sentence: what the density is of

    @property
    def bits_per_dim(self) -> np.ndarray:
        return -self.log_prob / (self.dims * math.log(2.0))


def what_is_measured(pipe: Any) -> str:
    sigma = pipe.config.noise_std
    noise = f" plus training noise N(0, {sigma:g}^2)" if sigma > 0 else ""
    if pipe.vae is None:
        return f"exact density of the pixels in [-1, 1] under the flow's model of pixels{noise}"
    return (
        "exact density of the VAE latent (posterior mean x scaling factor) under the flow's model "
        f"of latents{noise}"
    )


def score_images(pipe: Any, images: Any, prompts: str | Sequence[str] = "", batch_size: int = 16) -> Scores:
    """Score images (paths, PIL images or arrays; see edit_inputs) with one prompt or one each.

    Images keep their own size when it is a valid one (a multiple of the model's size step);
    otherwise they are resized with a warning, as for editing. All are read and checked
    before the flow runs."""
    sources = list(images) if isinstance(images, (list, tuple)) else [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        sources = list(images)
    prompts = [prompts] * len(sources) if isinstance(prompts, str) else list(prompts)
    if len(prompts) == 1:
        prompts = prompts * len(sources)
    if len(prompts) != len(sources):
        raise ValueError(f"got {len(prompts)} prompts for {len(sources)} images; give one or {len(sources)}")
    pixels = [prepare_images(image, 1, pipe.image_channels, None, pipe.size_multiple)[0] for image in sources]
    for image in pixels:
        pipe.check_size(*image.shape[:2])
    log_prob, dims = np.zeros(len(pixels)), np.zeros(len(pixels), dtype=np.int64)
    first = 0
    while first < len(pixels):  # batches of consecutive images of one size
        stop = first + 1
        while stop < len(pixels) and stop - first < batch_size and pixels[stop].shape == pixels[first].shape:
            stop += 1
        y, _ = pipe.conditions(prompts[first:stop], guided=False)
        latents = pipe.encode(pipe.from_numpy(np.stack(pixels[first:stop])))
        log_prob[first:stop] = pipe.log_prob(latents, y).tolist()  # tolist: mx.array and torch.Tensor
        dims[first:stop] = int(np.prod(pipe.to_numpy(latents).shape[1:]))
        first = stop
    return Scores(log_prob, dims, prompts, what_is_measured(pipe))
