"""Video training data without a framework: folders of clips, a fixed number of frames per clip,
and the epoch order both twins read.

A clip is a video file (.gif, .webp, .mp4) or a folder of frames (PNG, JPEG, BMP; in
name order). Folders follow the image folders' conventions (starflow_core.training.image_folders):
captions in `metadata.jsonl` whose `file_name` names a clip file or a frame folder, or one
subfolder per class holding clips, or just clips (unconditional).

Frames per clip, as the official dataset.py `sample_clip` takes them: `num_frames` frames
spaced by step = source fps / `fps` (1 when `fps` is None or not below the source's rate;
rounded to whole frames, so 30 fps read at 16 takes frames 0, 2, 4, 6, 8, 9, 11, ...), from
a start drawn uniformly among the starts that fit; a clip too short for that span gives
`num_frames` frames spread evenly over all it has (repeating frames when it has fewer). The
start comes from the seeded epoch order (`ClipRef.draw`), not from a global random state,
so both twins, and a resumed run, take the same frames. A frame folder's rate is the one
in its video.json (written by starflow_core.video.files), else unknown (step 1). Each frame
is cropped and resized as an image of the folder would be, and a flipped clip is flipped
as a whole. The `fps` a sample reports (the fps_cond prompt template) is `fps` when given,
else the clip's own rate rounded, 0 when unknown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from starflow_core.training.image_folders import (
    ImageFolder,
    SampleRef,
    UnreadableImageError,
    aspect_ratio_to_size,
    center_crop_resize,
    epoch_batches,
    nearest_bucket,
    to_8bit,
)
from starflow_core.video.files import FRAME_SUFFIXES, VIDEO_FORMATS, read_video, video_size

CLIP_SUFFIXES = tuple(VIDEO_FORMATS)  # .mp4, .gif, .webp
START_DRAWS = 1 << 24  # the start of a clip is draw % (number of starts); exact in float32 too


@dataclasses.dataclass(frozen=True)
class ClipRef(SampleRef):
    """A sample of a global batch (SampleRef) and the draw that picks its first frame."""

    draw: int = 0


def clip_frame_indices(
    total: int, num_frames: int, source_fps: float, fps: float | None, draw: int
) -> list[int]:
    """Which of a clip's `total` frames to take (the official `sample_clip`, with the random
    start replaced by `draw`)."""
    if total < 1 or num_frames < 1:
        raise ValueError(f"a clip needs frames: total={total}, num_frames={num_frames}")
    if fps is None or not source_fps or fps >= source_fps or num_frames == 1:
        step = 1.0
    else:  # the official arithmetic, term for term, so rounding lands on the same frames
        span = (num_frames - 1) / fps * source_fps
        step = max(span / (num_frames - 1), 1.0)
    max_start = total - step * (num_frames - 1)
    if max_start <= 1:  # too short for the span: spread over the whole clip
        return np.linspace(0, total - 1, num_frames, dtype=int).tolist()
    max_start = int(np.floor(max_start - 1))
    start = draw % (max_start + 1)
    return [int(np.round(start + i * step)) for i in range(num_frames)]


def video_epoch_batches(
    buckets: Sequence[str], global_batch: int, seed: int, epoch: int, flip: bool
) -> list[list[ClipRef]]:
    """The image epoch order (epoch_batches), each sample with its clip-start draw."""
    batches = epoch_batches(buckets, global_batch, seed, epoch, flip)
    rng = random.Random(f"{seed}:{epoch}:clip starts")
    return [
        [ClipRef(ref.index, ref.flip, ref.slot, rng.randrange(START_DRAWS)) for ref in batch]
        for batch in batches
    ]


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir() if p.is_file())


def is_clip(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in CLIP_SUFFIXES) or is_frame_folder(path)


def find_clips(folder: Path) -> list[Path]:
    """Every clip under `folder` in name order; a frame folder is one clip (not searched further)."""
    clips = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if is_clip(path):
            clips.append(path)
        elif path.is_dir():
            clips.extend(find_clips(path))
    return clips


class VideoFolder:
    """Clips with captions (metadata.jsonl), class labels (subfolders) or nothing (unconditional)."""

    def __init__(
        self,
        folder: str | Path,
        conditioning: str,
        image_size: int,
        multiple: int,
        num_frames: int,
        fps: float | None = None,
        buckets: bool = False,
        channels: int = 3,
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no video folder at {folder}")
        if channels not in (1, 3):
            raise ValueError(f"video folders give 1 (grey) or 3 (RGB) channels, not {channels}")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a whole number >= 1, got {num_frames!r}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 (or None for the clips' own rate), got {fps!r}")
        self.folder, self.conditioning = folder, conditioning
        self.image_size, self.multiple, self.channels = image_size, multiple, channels
        self.num_frames, self.fps = num_frames, fps
        self.class_names: list[str] = []
        if conditioning == "text":
            self.files, self.targets = ImageFolder._read_metadata(folder, is_sample=is_clip)
        elif conditioning == "label":
            self.class_names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_clip(p))
            if not self.class_names:
                raise ValueError(
                    f"{folder} has no class subfolders; a label model needs <folder>/<class>/<clip>"
                )
            pairs = [
                (clip, label)
                for label, name in enumerate(self.class_names)
                for clip in find_clips(folder / name)
            ]
            self.files, self.targets = [p for p, _ in pairs], [label for _, label in pairs]
        elif conditioning == "none":
            self.files = find_clips(folder)
            self.targets = [None] * len(self.files)
        else:
            raise ValueError(f"conditioning must be text, label or none, got {conditioning!r}")
        if not self.files:
            raise ValueError(
                f"{folder} holds no clips ({', '.join(CLIP_SUFFIXES)} files or folders of frames); "
                "nothing to train on"
            )
        self.buckets = [self._bucket_of(path) if buckets else "1:1" for path in self.files]

    @staticmethod
    def _bucket_of(path: Path) -> str:
        try:
            height, width = video_size(path)  # the header only
        except (OSError, ValueError):
            return "1:1"  # unreadable: reported as corrupt when loaded
        return nearest_bucket(width, height)

    def __len__(self) -> int:
        return len(self.files)

    def image_size_of(self, index: int) -> tuple[int, int]:
        """(height, width) of clip `index`'s frames after cropping to its bucket."""
        return aspect_ratio_to_size(self.image_size, self.buckets[index], self.multiple)

    def read_clip(self, index: int, flip: bool, draw: int) -> tuple[np.ndarray, int] | None:
        """((T, H, W, channels) float32 in [-1, 1], fps), or None if the clip cannot be read."""
        try:
            video = read_video(self.files[index])
        except (OSError, ValueError):
            return None
        height, width = self.image_size_of(index)
        taken = clip_frame_indices(len(video.frames), self.num_frames, video.fps, self.fps, draw)
        frames = []
        for frame in video.frames[taken]:
            try:
                image = to_8bit(Image.fromarray(frame), self.channels)
            except UnreadableImageError:
                return None
            image = center_crop_resize(image, height, width)
            if flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            frames.append(np.asarray(image, dtype=np.float32).reshape(height, width, self.channels))
        fps = self.fps if self.fps is not None else video.fps
        return np.stack(frames) / 127.5 - 1.0, int(round(fps))

    def why_unreadable(self, index: int) -> str:
        """'<clip>: <reason>' for a clip read_clip refused (for warnings and errors)."""
        try:
            read_video(self.files[index])
        except (OSError, ValueError) as err:
            return str(err)
        return str(self.files[index])

    def fingerprint(self) -> dict:
        """What identifies this data set: its clips, their conditions and the frames taken."""
        digest = hashlib.sha256()
        digest.update(f"frames={self.num_frames} fps={self.fps}\n".encode())
        for path, target in zip(self.files, self.targets, strict=True):
            digest.update(f"{path.relative_to(self.folder)}\t{target}\n".encode())
        return {"folder": str(self.folder.resolve()), "count": len(self.files), "digest": digest.hexdigest()}

    def target_of(self, index: int) -> dict:
        """The condition of clip `index`: {"text": caption}, {"label": class} or {}."""
        if self.conditioning == "text":
            return {"text": self.targets[index]}
        if self.conditioning == "label":
            return {"label": self.targets[index]}
        return {}

    def item(self, ref: ClipRef) -> dict:
        """Sample `ref` as numpy: "video" (T, H, W, C) float32, "fps", "slot", "index",
        "corrupt" (a zero placeholder video when unreadable) and "label" / "text"."""
        clip = self.read_clip(ref.index, ref.flip, ref.draw)
        corrupt = clip is None
        if corrupt:
            clip = np.zeros((self.num_frames, *self.image_size_of(ref.index), self.channels), np.float32), 0
        return {
            "video": clip[0],
            "fps": clip[1],
            "slot": ref.slot,
            "index": ref.index,
            "corrupt": corrupt,
            **self.target_of(ref.index),
        }
