"""Image-to-image and inpainting with an exactly invertible flow (training-free; docs/editing.md).

The guided sampler at condition y and guidance w is an exact bijection T (each token affine
in its noise given the tokens before it), and `invert_flow` computes T^-1 of a known image in
one teacher-forced pass. With x the input (VAE latent for latent models) and eps the noise of
the seed (make_noise, as in generation):

    image-to-image   z = sqrt(1 - S^2) T_source^-1(x) + S eps        output T_target(z)

S = 0 returns x (float error), S = 1 is plain generation with the seed, and the mix keeps
z ~ N(0, I) when T^-1(x) is. Inpainting (mask m, 1 = regenerate) does this on the masked
entries only and pastes the known ones back, for `rounds` rounds; each later round re-inverts
the pasted result and draws the masked noise afresh, so the regenerated part adapts to the
known part (it is exact conditional sampling when every block reads the known tokens first).

The known entries of the output equal the input exactly: pixels for pixel models; latents
for latent models, whose decoded pixels are then blended with the input pixels outside the
mask (as diffusers' inpainting does). The score step (noisy-latent models) uses noise
std S * noise_std: the output carries training noise of that size (exact for a Gaussian
model), so S = 0 is not smoothed and S = 1 matches generation. All arithmetic outside the
network calls is numpy float32 here, so both twins compute it identically.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from starflow_core.generation.edit_inputs import (
    check_strength,
    describe_input,
    latent_mask,
    prepare_images,
    prepare_masks,
)
from starflow_core.generation.inputs import make_noise
from starflow_core.generation.result import Generation
from starflow_core.generation.settings import GenerationSettings, check_finite

DEFAULT_ROUNDS = 4  # inpainting rounds; docs/editing.md: accuracy vs rounds on the digits model
DEFAULT_STRENGTH = 0.8  # image-to-image without a mask (diffusers' default); inpainting: 1


@dataclasses.dataclass(frozen=True)
class EditInputs:
    """A checked edit request (starflow_core.generation.edit_inputs prepares the arrays)."""

    images: np.ndarray  # (B, H, W, C) float32 in [-1, 1], one per job
    strength: float  # 0 keeps the input, 1 regenerates (the masked part)
    masks: np.ndarray | None = None  # (B, H, W) in {0, 1}, 1 = regenerate; None: image-to-image
    source_prompts: list[str] | None = None  # condition of the inversion; None: the target prompts
    rounds: int = DEFAULT_ROUNDS
    description: dict[str, str] = dataclasses.field(default_factory=dict)  # for PNG metadata

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"inpainting rounds must be >= 1, got {self.rounds}")


def prepare_request(
    pipe: Any,
    count: int,
    image: Any,
    strength: float | None,
    mask_image: Any,
    source_prompt: str | Sequence[str] | None,
    rounds: int,
    height: int | None,
    width: int | None,
) -> EditInputs:
    """Check and load the inputs of an edit of `count` images (before any network runs)."""
    if image is None:
        raise ValueError("mask_image, strength and source_prompt edit an image: pass image= as well")
    if (height is None) != (width is None):
        raise ValueError("to resize the input image give both height and width")
    if strength is None:
        strength = 1.0 if mask_image is not None else DEFAULT_STRENGTH
    strength = check_strength(strength)
    size = (height, width) if height is not None else None
    images = prepare_images(image, count, pipe.image_channels, size, pipe.size_multiple)
    masks = None if mask_image is None else prepare_masks(mask_image, count, *images.shape[1:3])
    sources = None
    if source_prompt is not None:
        sources = [source_prompt] if isinstance(source_prompt, str) else list(source_prompt)
        if len(sources) not in (1, count):
            raise ValueError(f"got {len(sources)} source prompts for {count} images; give one or {count}")
        sources = sources * count if len(sources) == 1 else sources
    description = {"image": describe_input(image)}
    if masks is not None:
        description["mask"] = describe_input(mask_image)
        description["inpaint_rounds"] = str(rounds)
    if sources is not None:
        description["source_prompt"] = sources[0] if len(set(sources)) == 1 else repr(sources)
    return EditInputs(images, strength, masks, sources, rounds, description)


def mix_noise(inverted: np.ndarray, fresh: np.ndarray, strength: float) -> np.ndarray:
    """sqrt(1 - S^2) inverted + S fresh: N(0, I) stays N(0, I) for independent inputs; S = 0 gives
    `inverted` and S = 1 `fresh`, both exactly (float32 throughout)."""
    keep = np.float32(np.sqrt(1.0 - strength * strength))
    return keep * inverted.astype(np.float32) + np.float32(strength) * fresh.astype(np.float32)


def round_noise(seeds: list[int], index: int, channels: int, height: int, width: int) -> np.ndarray:
    """(B, h, w, C) noise of inpainting round `index`: the seed's own noise (make_noise) in
    round 0, then a separate stream per (seed, round)."""
    if index == 0:
        noise = make_noise(seeds, channels, height, width)
    else:
        noise = np.stack(
            [
                np.random.default_rng([int(seed), index]).standard_normal(
                    (channels, height, width), np.float32
                )
                for seed in seeds
            ]
        )
    return noise.transpose(0, 2, 3, 1)  # NCHW -> NHWC


def edit(
    pipe: Any,
    prompts: list[str],
    seeds: list[int],
    settings: GenerationSettings,
    request: EditInputs,
    denoise: bool,
    progress: bool,
    on_block: Callable[[int, Any], None] | None = None,
    seeds_drawn: bool = False,
) -> Generation:
    """Run image-to-image (request.masks None) or inpainting through a twin's pipeline;
    `on_block(block_index, state)` is passed on to the sampler (every round's blocks)."""
    images = request.images
    height, width = images.shape[1:3]
    pipe.check_size(height, width)
    strength = request.strength
    guided = settings.guidance > 0
    y, y_null = pipe.conditions(prompts, guided)
    source = (
        (y, y_null) if request.source_prompts is None else pipe.conditions(request.source_prompts, guided)
    )
    data = pipe.to_numpy(pipe.encode(pipe.from_numpy(images)))  # (B, h, w, C): latents or pixels
    regenerate = (
        np.ones((*data.shape[:3], 1), np.float32)
        if request.masks is None
        else latent_mask(request.masks, pipe.parts.vae_downsample)
    )  # (B, h, w, 1)
    if request.masks is not None and not regenerate.any():
        warnings.warn("the mask is empty (nothing to regenerate); returning the input image", stacklevel=3)
        return _result(pipe, prompts, seeds, settings, request, "none", 0, data, images, seeds_drawn)
    rounds = request.rounds if (request.masks is not None and not regenerate.all()) else 1
    channels, h, w = data.shape[3], data.shape[1], data.shape[2]

    def paste(sampled):  # the known entries back from the input; twin arrays in and out
        if request.masks is None:  # image-to-image: nothing known, arrays pass untouched (as in generate)
            return sampled
        return pipe.from_numpy(np.where(regenerate > 0, pipe.to_numpy(sampled), data))

    # T_source^-1 of the input; unused at strength 1 without a known region (plain generation)
    if strength == 1.0 and regenerate.all():
        start = np.zeros_like(data)
    else:
        start = pipe.to_numpy(pipe.invert_flow(pipe.from_numpy(data), *source, settings))
    nothing_known = regenerate.reshape(len(regenerate), -1).all(axis=1)[:, None, None, None]  # (B, 1, 1, 1)
    latents, steps, first_fresh = None, 0, None
    for index in range(rounds):
        # later rounds re-invert the pasted result under the target condition
        noise = start if index == 0 else pipe.to_numpy(pipe.invert_flow(latents, y, y_null, settings))
        fresh = mix_noise(start, round_noise(seeds, index, channels, h, w), strength)
        first_fresh = fresh if index == 0 else first_fresh
        fresh = np.where(nothing_known, first_fresh, fresh)  # rows with a full mask: round 0 only
        noise = np.where(regenerate > 0, fresh, noise)
        noise = pipe.noise_array(np.ascontiguousarray(noise.transpose(0, 3, 1, 2)))  # as generate's noise
        sampled, count = pipe.sample_flow(noise, y, y_null, settings, progress, on_block)
        check_finite(pipe.to_numpy(sampled), seeds, "flow samples", settings.guidance)
        latents, steps = paste(sampled), steps + count

    mode = pipe.denoise_mode(denoise) if strength > 0 else "none"
    if mode == "score":
        latents = paste(pipe.denoise(latents, y, strength * pipe.config.noise_std))
    decoded = pipe.to_numpy(pipe.decode(latents, use_decoder=mode == "decoder"))
    check_finite(decoded, seeds, "decoded images", settings.guidance)
    if request.masks is not None:  # the known pixels are the input's (exact for pixel models already)
        decoded = np.where(request.masks[..., None] > 0, decoded, images)
    return _result(
        pipe, prompts, seeds, settings, request, mode, steps, pipe.to_numpy(latents), decoded, seeds_drawn
    )


def _result(pipe, prompts, seeds, settings, request, mode, steps, latents, images, seeds_drawn) -> Generation:
    return Generation(
        model=pipe.parts.name,
        prompts=prompts,
        seeds=seeds,
        settings=settings,
        height=images.shape[1],
        width=images.shape[2],
        denoise=mode,
        steps=steps,
        latents=latents.astype(np.float32),
        images=images.astype(np.float32),
        precision=pipe.precision,
        source=pipe.parts.source,
        decoder=str(pipe.parts.decoder.resolve()) if mode == "decoder" else None,
        framework=pipe.framework,
        seeds_drawn=seeds_drawn,
        edit={"strength": f"{request.strength:g}", **request.description},
    )
