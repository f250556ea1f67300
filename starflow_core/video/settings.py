"""What a video model's pipeline knows beyond its flow (framework-free): the clip length and rate
it was trained on, its prompt template flags, the VAE's temporal scale, and the arithmetic
shared by both twins' video pipelines (latent frames, noise, the sliding window).

A pipeline folder holds these in model_index.json under "video"; an official release takes
them from its YAML (vid_size 'frames:fps', fps_cond, cond_noise_level, mix_aspect, and the
`:scale` suffix of its VAE name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from starflow_core.field_types import check_field_types
from starflow_core.video.prompts import TemplateFlags


@dataclasses.dataclass(frozen=True)
class VideoDefaults:
    """A video model's defaults: `num_frames` pixel frames at `fps` (its training clips), the
    prompt template flags, and `temporal_scale` (latents of every frame after the first are
    multiplied by it at encoding and divided by it at decoding; the official `vae:0.6`)."""

    num_frames: int = 81
    fps: int = 16
    fps_cond: bool = False
    cond_noise_level: bool = False
    mix_aspect: bool = False
    temporal_scale: float = 1.0

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if not self.temporal_scale > 0:
            raise ValueError(f"temporal_scale must be > 0, got {self.temporal_scale}")

    @property
    def template(self) -> TemplateFlags:
        return TemplateFlags(self.fps_cond, self.cond_noise_level, self.mix_aspect)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VideoDefaults:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown video settings {unknown}; valid: {sorted(names)}")
        return cls(**values)


def latent_frames(num_frames: int, temporal_factor: int) -> int:
    """Latent frames of a `num_frames` video through a VAE that halves time log2(temporal_factor)
    times causally (the first frame alone, then groups): (num_frames - 1) / factor + 1."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        k = max(0, (num_frames - 1) // temporal_factor)
        raise ValueError(
            f"--num-frames must be {temporal_factor}k + 1 for this VAE (1, {temporal_factor + 1}, "
            f"{2 * temporal_factor + 1}, ...), got {num_frames}; try {k * temporal_factor + 1} or "
            f"{(k + 1) * temporal_factor + 1}"
        )
    return (num_frames - 1) // temporal_factor + 1


def make_video_noise(seeds: Sequence[int], frames: int, channels: int, height: int, width: int) -> np.ndarray:
    """(B, T, C, h, w) float32 standard normal noise, row b from default_rng(seeds[b]) (the
    official sampler's layout; each twin moves the channels where its flow wants them)."""
    rows = []
    for seed in seeds:
        if int(seed) < 0:
            raise ValueError(f"seeds must be >= 0, got {seed}")
        generator = np.random.default_rng(int(seed))
        rows.append(generator.standard_normal((frames, channels, height, width), np.float32))
    return np.stack(rows)


# The official sampler's --context_length default: the frames re-encoded when the window slides.
OFFICIAL_CONTEXT_FRAMES = 16


@dataclasses.dataclass(frozen=True)
class Window:
    """The deep block's sliding window for a video longer than training (official sample.py
    with --target_length): `frames` latent frames attended to, `context` re-encoded ones."""

    frames: int
    context: int


def sliding_window(
    configured: int | None, trained_latent_frames: int, latent_frames_asked: int
) -> Window | None:
    """The window a run samples with: the model's own local_attn_window when it has one; else,
    for more latent frames than the training clips held, a window of the training length (as the
    official sampler sets for a longer --target_length); None when the whole video fits.

    The context re-encoded when the window slides is the official sampler's default of 16
    frames (the 7B: window 21, context 16), fewer where the window holds fewer than 17."""
    if configured:
        return Window(configured, min(OFFICIAL_CONTEXT_FRAMES, configured - 1))
    if latent_frames_asked <= trained_latent_frames:
        return None
    return Window(trained_latent_frames, min(OFFICIAL_CONTEXT_FRAMES, trained_latent_frames - 1))


def center_crop_box(
    height: int, width: int, target_h: int, target_w: int
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The official sample.py's image-to-video resize and crop: scale by
    max(target_h / height, target_w / width), size int(side * scale) each, then the centre
    target_h x target_w. Returns ((resized_h, resized_w), (left, top, right, bottom))."""
    scale = max(target_h / height, target_w / width)
    resized_h, resized_w = int(height * scale), int(width * scale)
    resized_h, resized_w = max(resized_h, target_h), max(resized_w, target_w)  # int() may fall short by one
    top = int(round((resized_h - target_h) / 2.0))  # torchvision CenterCrop's rounding
    left = int(round((resized_w - target_w) / 2.0))
    return (resized_h, resized_w), (left, top, left + target_w, top + target_h)


def progress_units(frames: int, frame_tokens: int) -> dict[str, Any]:
    """tqdm arguments for a block's sampling bar: a video's counts frames (tokens shown divided by
    the tokens of a frame: 3.5/21 frame), an image's tokens."""
    if frames <= 1:
        return {}
    return {"unit": " frame", "unit_scale": 1 / frame_tokens}
