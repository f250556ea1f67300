"""The figures of a moving-digits video model, measured through a video pipeline of either twin
(StarFlowVideoPipeline.generate_video: labels from prompts, the pipeline's default guidance,
the learned self-denoiser as the official process_denoising applies it).

- text-to-video: `per_class` clips of every digit; the share of frames a classifier of real
  digits (starflow_core.digits_video.fit_frame_classifier) reads as the requested digit, and
  the share of steps where the digit's ink centre moves <= 3 px (smooth motion).
- image-to-video: the first frame of held-out clips (digits the model never saw), given as a
  picture the pipeline resizes, encodes and noises as for any image; the share of generated
  frames that keep the given digit, under its label (at the default guidance) or under the
  null label (the frame alone says which digit).

Files written by the command line are read back with `read_clips` (GIF keeps the pixels;
MP4 is lossy), so the figures can be checked on what a user gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.digits_video import (
    CANVAS,
    DEFAULT_FRAMES,
    classify_frames,
    moving_digits,
    smooth_fraction,
    to_uint8_frames,
)

# What the embedded demo must reach (and its tests assert)
TARGETS = {"frames_read_as_requested": 0.90, "smooth_steps": 0.90, "generated_frames_keep_the_digit": 0.80}
SMOOTH_STEP_PX = 3.0


def grey_clips(frames: np.ndarray) -> np.ndarray:
    """Videos (N, T, H, W, C) in [-1, 1] or uint8, H and W whole multiples of 16 -> (N, T, 16, 16)
    in [-1, 1]: channels averaged, enlarged pixels averaged back to one."""
    frames = np.asarray(frames)
    clips = frames.astype(np.float32) / 127.5 - 1.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
    n, t, h, w, _ = clips.shape
    if h % CANVAS or w % CANVAS:
        raise ValueError(f"frames of {h}x{w} pixels are not a whole multiple of the {CANVAS}x{CANVAS} canvas")
    grey = clips.mean(axis=-1).reshape(n, t, CANVAS, h // CANVAS, CANVAS, w // CANVAS)
    return np.clip(grey.mean(axis=(3, 5)), -1.0, 1.0)


def read_clips(paths: list[Path]) -> np.ndarray:
    """Video files (GIF, WebP, MP4) -> (N, T, 16, 16) in [-1, 1]."""
    from starflow_core.video.files import read_video

    return grey_clips(np.stack([read_video(path).frames for path in paths]))


def clip_figures(clips: np.ndarray, labels: np.ndarray, classifier) -> dict[str, float]:
    """Text-to-video figures of clips (N, T, 16, 16) asked for `labels` (N,)."""
    read = classify_frames(classifier, clips)
    return {
        "clips": len(labels),
        "frames_read_as_requested": float(np.mean(read == labels[:, None])),
        "clips_all_frames_requested": float(np.mean((read == labels[:, None]).all(axis=1))),
        "smooth_steps": smooth_fraction(clips, SMOOTH_STEP_PX),
    }


def text_to_video(
    pipe, classifier, per_class: int, seed: int = 0, guidance: float | None = None, frames: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """(clips (10 * per_class, T, 16, 16), figures) of text-to-video; seeds seed, seed + 1, ..."""
    labels = np.repeat(np.arange(10), per_class)
    result = pipe.generate_video(
        [str(label) for label in labels],
        seeds=[seed + i for i in range(len(labels))],
        guidance=guidance,
        num_frames=frames,
    )
    clips = grey_clips(result.frames)
    return clips, {"guidance": result.settings.guidance, **clip_figures(clips, labels, classifier)}


def given_frames(split, count: int, seed: int, frames: int = DEFAULT_FRAMES):
    """Held-out moving clips whose first frames are given to image-to-video (MovingDigits)."""
    return moving_digits(split.test_images, split.test_labels, count, seed, frames)


def image_to_video(
    pipe,
    classifier,
    split,
    count: int,
    labelled: bool,
    seed: int = 0,
    frames: int | None = None,
    guidance: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(clips (count, T, 16, 16) with the given frame first, figures) of image-to-video from the
    first frames of `count` held-out clips, under their labels (at `guidance`, default: the
    pipeline's) or the null label (no guidance)."""
    from PIL import Image

    given = given_frames(split, count, seed + 1, frames or DEFAULT_FRAMES)
    pictures = to_uint8_frames(given.clips[:, 0])
    clips = []
    for index, (picture, label) in enumerate(zip(pictures, given.labels, strict=True)):
        result = pipe.generate_video(
            str(label) if labelled else "",
            seeds=seed + index,
            guidance=guidance if labelled else 0.0,
            num_frames=frames,
            image=Image.fromarray(picture).convert("RGB"),
        )
        clips.append(grey_clips(result.frames)[0])
    clips = np.stack(clips)
    read = classify_frames(classifier, clips[:, 1:])
    return clips, {
        "label_given": labelled,
        "guidance": result.settings.guidance,
        "clips": count,
        "generated_frames_keep_the_digit": float(np.mean(read == given.labels[:, None])),
        "smooth_steps_from_the_given_frame": smooth_fraction(clips, SMOOTH_STEP_PX),
    }


def animation(rows: list[np.ndarray], scale: int = 3) -> np.ndarray:
    """Rows of clips (N, T, 16, 16) -> (T, H, W) uint8 frames, 2 px gaps, enlarged `scale` times."""
    frames, gap, cell = rows[0].shape[1], 2, CANVAS + 2
    width = max(len(r) for r in rows)
    canvas = np.zeros((frames, len(rows) * cell - gap, width * cell - gap), np.uint8)
    for r, clips in enumerate(rows):
        for c, clip in enumerate(to_uint8_frames(clips)):
            canvas[:, r * cell : r * cell + CANVAS, c * cell : c * cell + CANVAS] = clip
    return canvas.repeat(scale, axis=1).repeat(scale, axis=2)
