"""Moving digits: scikit-learn's 8x8 digits sliding over a 16x16 dark canvas, and the measures
of a video demo (where the digit is in each frame, how far it moves, which digit each frame shows).

Framework-free (numpy; scikit-learn only through starflow_core.digits). A clip is a digit at an
integer position moving at a constant integer velocity and bouncing off the canvas edges:
along each axis the top-left corner follows the unfolded path `p0 + v t` reflected into
[0, CANVAS - DIGIT] (a triangle wave), so the speed never changes and the digit never
leaves the canvas. Values are model units: -1 the dark canvas, the digit's grey levels 0..16
mapped to [-1, 1] as in starflow_core.digits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from starflow_core.digits import DIGIT_NAMES, to_levels

CANVAS = 16  # pixels per side
DIGIT = 8  # the digits' side
TRAVEL = CANVAS - DIGIT  # the top-left corner moves in [0, TRAVEL] along each axis
BACKGROUND = -1.0  # the canvas in model units (grey level 0)
DEFAULT_FRAMES = 8
MAX_SPEED = 2  # pixels per frame along each axis: the box moves <= 2 * sqrt(2) < 3 px a frame


@dataclasses.dataclass(frozen=True)
class MovingDigits:
    """Clips (N, T, 16, 16) in model units, their labels (N,), the digit's top-left corner in
    every frame (N, T, 2) as (row, column) and the velocities (N, 2) they started with."""

    clips: np.ndarray
    labels: np.ndarray
    corners: np.ndarray
    velocities: np.ndarray


def bounce(unfolded: np.ndarray) -> np.ndarray:
    """Positions along an unfolded straight path reflected into [0, TRAVEL] (a triangle wave)."""
    phase = np.mod(unfolded, 2 * TRAVEL)
    return np.where(phase <= TRAVEL, phase, 2 * TRAVEL - phase)


def trajectory(start: np.ndarray, velocity: np.ndarray, frames: int) -> np.ndarray:
    """(frames, 2) top-left corners of a digit starting at `start` (2,) with `velocity` (2,)."""
    time = np.arange(frames)[:, None]
    return bounce(start[None, :] + velocity[None, :] * time).astype(np.int64)


def draw(digit: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """(T, 16, 16) frames of `digit` (8, 8, model units) placed at `corners` (T, 2)."""
    frames = np.full((len(corners), CANVAS, CANVAS), BACKGROUND, np.float32)
    for frame, (row, col) in zip(frames, corners, strict=True):
        frame[row : row + DIGIT, col : col + DIGIT] = digit
    return frames


def moving_digits(
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int,
    frames: int = DEFAULT_FRAMES,
    max_speed: int = MAX_SPEED,
) -> MovingDigits:
    """`count` clips of `frames` frames from `digits` (N, 8, 8) in model units with `labels` (N,):
    digit, start corner and velocity (each axis in [-max_speed, max_speed], never both 0)
    drawn from `seed` alone, so the same seed gives the same clips."""
    if frames < 2 or count < 1 or not 1 <= max_speed <= TRAVEL:
        raise ValueError(
            f"need frames >= 2, count >= 1 and 1 <= max_speed <= {TRAVEL}; got {frames}, {count}, {max_speed}"
        )
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(digits), count)
    starts = rng.integers(0, TRAVEL + 1, (count, 2))
    velocities = rng.integers(-max_speed, max_speed + 1, (count, 2))
    still = (velocities == 0).all(axis=1)
    while still.any():  # redraw the velocities of clips that would not move
        velocities[still] = rng.integers(-max_speed, max_speed + 1, (int(still.sum()), 2))
        still = (velocities == 0).all(axis=1)
    corners = np.stack([trajectory(s, v, frames) for s, v in zip(starts, velocities, strict=True)])
    clips = np.stack([draw(digits[i], c) for i, c in zip(which, corners, strict=True)])
    return MovingDigits(clips, np.asarray(labels)[which].astype(np.int64), corners, velocities)


# ----- measures -----------------------------------------------------------------------------
def ink(frames: np.ndarray) -> np.ndarray:
    """Grey levels above the dark canvas (..., 16, 16) -> 0..16, the weight of each pixel."""
    return to_levels(np.asarray(frames, np.float32))


def digit_centres(frames: np.ndarray) -> np.ndarray:
    """(..., 2) ink-weighted centre (row, column) of each frame (..., 16, 16); a frame without
    ink has its centre in the middle of the canvas."""
    return _weighted_centres(ink(frames))


def _weighted_centres(weight: np.ndarray) -> np.ndarray:
    total = weight.sum(axis=(-2, -1))
    grid = np.arange(CANVAS, dtype=np.float64)
    rows = (weight.sum(axis=-1) * grid).sum(axis=-1)
    cols = (weight.sum(axis=-2) * grid).sum(axis=-1)
    middle = (CANVAS - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.stack([rows / total, cols / total], axis=-1)
    return np.where((total > 0)[..., None], centre, middle)


def centre_steps(clips: np.ndarray) -> np.ndarray:
    """(..., T - 1) distance in pixels the digit's centre moves between consecutive frames."""
    centres = digit_centres(clips)
    return np.linalg.norm(np.diff(centres, axis=-2), axis=-1)


def smooth_fraction(clips: np.ndarray, max_step: float = 3.0) -> float:
    """Share of frame-to-frame steps over all clips (N, T, 16, 16) where the centre moves <= max_step."""
    return float(np.mean(centre_steps(clips) <= max_step))


def digit_corners(frames: np.ndarray) -> np.ndarray:
    """(..., 2) top-left corner of the 8x8 window holding the most ink in each frame; among
    equal windows (a digit with empty border columns fits several), the one whose centre is
    nearest the ink's centre, then the first."""
    weight = ink(frames)
    shape = weight.shape[:-2]
    weight = weight.reshape(-1, CANVAS, CANVAS)
    centres = _weighted_centres(weight)
    offsets = np.arange(TRAVEL + 1)
    # ink inside every window: sums over rows r..r+7 and columns c..c+7 via cumulative sums
    padded = np.pad(np.cumsum(np.cumsum(weight, axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
    end = offsets + DIGIT
    window = (
        padded[:, end][:, :, end]
        - padded[:, offsets][:, :, end]
        - padded[:, end][:, :, offsets]
        + padded[:, offsets][:, :, offsets]
    )  # (N, 9, 9)
    best = window.max(axis=(1, 2), keepdims=True)
    window_centres = offsets + (DIGIT - 1) / 2
    distance = (window_centres[None, :, None] - centres[:, 0, None, None]) ** 2 + (
        window_centres[None, None, :] - centres[:, 1, None, None]
    ) ** 2
    score = np.where(np.isclose(window, best), distance, np.inf).reshape(len(weight), -1)
    flat = np.argmin(score, axis=1)
    return np.stack(np.divmod(flat, TRAVEL + 1), axis=-1).reshape(*shape, 2)


def cut_digits(clips: np.ndarray, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The 8x8 digit of every frame (N, T, 16, 16) -> (N * T, 8, 8), cut at `digit_corners`
    moved by `shift` (rows, columns; kept on the canvas), for a classifier of still digits."""
    frames = np.asarray(clips, np.float32).reshape(-1, CANVAS, CANVAS)
    return _cut(frames, digit_corners(frames), shift)


def _cut(frames: np.ndarray, corners: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """(N, 8, 8) windows of frames (N, 16, 16) at corners (N, 2) moved by shift, kept on the canvas."""
    corners = np.clip(corners + np.asarray(shift), 0, TRAVEL)
    return np.stack(
        [frame[r : r + DIGIT, c : c + DIGIT] for frame, (r, c) in zip(frames, corners, strict=True)]
    )


def to_uint8_frames(clips: np.ndarray) -> np.ndarray:
    """Model units (..., T, 16, 16) -> grey uint8 0..255 (level 16 is white), for video files."""
    return np.round(to_levels(np.asarray(clips, np.float32)) * (255 / 16)).astype(np.uint8)


def fit_frame_classifier(split, clips: int = 1000, seed: int = 0):
    """An SVC (as starflow_core.digits.fit_classifier) on the cut frames of moving clips of the
    real training digits, so it has seen the cutting's one-pixel shifts; judge frames with
    `classify_frames`."""
    from sklearn.svm import SVC

    moving = moving_digits(split.train_images, split.train_labels, clips, seed)
    frames = cut_digits(moving.clips)
    classifier = SVC(gamma=0.001, C=10.0)
    classifier.fit(
        to_levels(frames).reshape(len(frames), -1), np.repeat(moving.labels, moving.clips.shape[1])
    )
    return classifier


# Where the ink box is ambiguous (a digit narrower than 8 px, faint ink around a generated one)
# the most-ink window can sit a pixel off the digit, and a classifier of still digits then
# misreads a plain digit; frames are read at the window around it the classifier is surest of.
CUT_SEARCH = tuple((row, col) for row in (-1, 0, 1) for col in (-1, 0, 1))


def classify_frames(classifier, clips: np.ndarray, search: bool = True) -> np.ndarray:
    """(N, T) digit read in every frame of clips (N, T, 16, 16): at the 8x8 window of
    `digit_corners` and, with `search`, at the windows one pixel around it, keeping the class the
    classifier's decision function rates highest over all of them."""
    clips = np.asarray(clips, np.float32)
    frames = clips.reshape(-1, CANVAS, CANVAS)
    corners = digit_corners(frames)
    scores = np.stack(
        [
            classifier.decision_function(to_levels(_cut(frames, corners, shift)).reshape(len(frames), -1))
            for shift in (CUT_SEARCH if search else ((0, 0),))
        ]
    )  # (windows, frames, classes): the class rated highest in any window wins
    return classifier.classes_[scores.max(axis=0).argmax(axis=1)].reshape(clips.shape[:2])


def write_clip_folder(
    folder: str | Path, moving: MovingDigits, fps: float = 8.0, suffix: str = ".gif", overwrite: bool = False
) -> list[Path]:
    """Clips as a training folder with one subfolder per class, named as the image demo's
    (`<folder>/3_three/<n>.gif`, so sorted names keep the digit order), or .webp, .mp4 ("" writes
    frame folders), at their 16x16 size, grey levels as uint8 RGB. Returns the paths written."""
    from starflow_core.video.files import write_video

    folder = Path(folder)
    pixels = to_uint8_frames(moving.clips)  # (N, T, 16, 16)
    written = []
    for number, (clip, label) in enumerate(zip(pixels, moving.labels, strict=True)):
        path = folder / f"{label}_{DIGIT_NAMES[label]}" / f"{number:05d}{suffix}"
        written.append(write_video(path, clip, fps, {"label": str(int(label))}, overwrite=overwrite))
    return written


def preview_frames(moving: MovingDigits, scale: int = 4) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of a grid showing the first clip of every class present, in
    digit order, each enlarged `scale` times (nearest), for a GIF people look at."""
    from starflow_core.generation.images import make_grid

    classes = sorted(set(moving.labels.tolist()))
    firsts = [int(np.flatnonzero(moving.labels == label)[0]) for label in classes]
    pixels = to_uint8_frames(moving.clips[firsts])  # (K, T, 16, 16)
    big = np.repeat(np.repeat(pixels, scale, axis=2), scale, axis=3)[..., None].repeat(3, axis=-1)
    return np.stack([make_grid(list(big[:, t]), cols=len(firsts)) for t in range(big.shape[1])])
