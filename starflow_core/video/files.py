"""Video files: uint8 frames (T, H, W, 3) and a frame rate, with their metadata, to disk and back.

The format follows the suffix of the path:

    .mp4    H.264 (PyAV, whose wheels bundle FFmpeg; the `video` extra), yuv420p where both
            sides are even (plays everywhere), yuv444p otherwise; CRF 12, near-lossless
    .gif    animated GIF (PIL); lossless when a frame has at most 256 colours (PIL's adaptive
            palette then holds them exactly), else quantised to 256 colours
    .webp   animated WebP (PIL), lossless
    other   a folder of PNG frames `0000.png`, `0001.png`, ... with `video.json` beside them

Metadata is a dict of text entries, as images carry (starflow_core.generation.record builds
them from the generation parameters): MP4 keeps them as one JSON object in the container's
`comment` tag, GIF in its comment extension, WebP in the EXIF image description (as still
WebP and JPEG images), a frame folder in `video.json` ({"fps", "frames", "metadata"}). An
`fps` entry is always added: GIF and WebP store frame times in 10 ms and 1 ms steps, and both
PIL writers merge identical consecutive frames, so reading expands frames by their display
time at that rate and the frames come back one for one.

`write_video` never replaces an existing file or folder unless asked: the video takes the
first free name `<stem>_1`, `<stem>_2`, ... claimed atomically (as images do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from starflow_core.extras import require
from starflow_core.generation.images import EXIF_IMAGE_DESCRIPTION
from starflow_core.generation.outputs import MAX_FREE_NAME_TRIES, numbered, write_new_file

VIDEO_FORMATS = {".mp4": "MP4", ".gif": "GIF", ".webp": "WEBP"}
FRAMES_JSON = "video.json"  # beside the PNG frames of a frame folder
FRAME_NAME = "{:04d}.png"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # frames a frame folder may hold (.webp is a clip)
MP4_CRF = "12"  # x264 constant rate factor: 0 lossless, 18 "visually lossless", 23 default
GIF_TICK_MS = 10  # GIF frame times are whole hundredths of a second
GIF_DEFAULT_MS = 100  # a GIF frame without a time shows this long (as browsers do)


@dataclasses.dataclass
class Video:
    """Frames (T, H, W, 3) uint8, frames per second, and the metadata entries of the file."""

    frames: np.ndarray
    fps: float
    metadata: dict[str, str]


# ----- names ------------------------------------------------------------------------------
def video_format(path: str | Path) -> str:
    """MP4, GIF or WEBP from the suffix, FRAMES for a path without one of those (a folder)."""
    return VIDEO_FORMATS.get(Path(path).suffix.lower(), "FRAMES")


def check_video_output(output: str | Path) -> None:
    """Refuse, before any compute, a suffix that is an image format (a video needs .mp4, .gif,
    .webp or a folder) and an MP4 without PyAV."""
    path = Path(output)
    suffix = path.suffix.lower()
    folder = path.is_dir() or str(output).endswith(("/", os.sep))
    if suffix and suffix not in VIDEO_FORMATS and not folder:
        raise ValueError(
            f"--output {output}: {suffix!r} is not a video format this writes; end the name in "
            f"{', '.join(VIDEO_FORMATS)}, or give a folder (a name without a suffix) for PNG frames"
        )
    if suffix == ".mp4":
        require("av", "writing MP4 video")


def as_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3); grey frames (T, H, W) or (T, H, W, 1) are repeated to RGB."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 (0..255), got {frames.dtype}")
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or 0 in frames.shape:
        raise ValueError(f"video frames must be (T, H, W, 3) with T, H, W >= 1, got {frames.shape}")
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise ValueError(f"fps must be a number in (0, 1000], got {fps!r}")
    return float(fps)


# ----- writing ----------------------------------------------------------------------------
def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    companion: Callable[[Path], Path] | None = None,
) -> Path:
    """Write a video in the format of `path`'s suffix and return the path written (the first
    free numbered name when `path`, or its `companion(path)` such as a JSON sidecar, exists and
    not `overwrite`)."""
    path, frames, fps = Path(path), as_frames(frames), check_fps(fps)
    entries = {**(metadata or {}), "fps": f"{fps:g}"}
    fmt = video_format(path)
    if fmt == "FRAMES":
        return _write_frame_folder(path, frames, fps, entries, overwrite, companion)
    if fmt == "MP4":
        require("av", "writing MP4 video")
    return write_new_file(
        path,
        lambda tmp: encode_video(tmp, frames, fps, entries, fmt),
        overwrite=overwrite,
        companion=companion,
    )


def encode_video(path: Path, frames: np.ndarray, fps: float, metadata: dict[str, str], fmt: str) -> None:
    """Write `frames` to the file `path` as MP4, GIF or WEBP (whatever its suffix)."""
    text = json.dumps(metadata, ensure_ascii=True)
    if fmt == "MP4":
        _encode_mp4(path, frames, fps, text)
        return
    from PIL import Image

    if fmt == "GIF":
        images = [Image.fromarray(frame) for frame in frames]  # PIL's palette is exact up to 256 colours
        extra = {"comment": text.encode("ascii"), "optimize": False, "disposal": 1}
        durations = _frame_times(len(frames), fps, GIF_TICK_MS)
    elif fmt == "WEBP":
        images = [Image.fromarray(frame) for frame in frames]
        exif = Image.Exif()
        exif[EXIF_IMAGE_DESCRIPTION] = text
        extra = {"lossless": True, "quality": 100, "method": 4, "exif": exif}
        durations = _frame_times(len(frames), fps, 1)
    else:
        raise ValueError(f"unknown video format {fmt!r}; use MP4, GIF or WEBP")
    images[0].save(
        path, format=fmt, save_all=True, append_images=images[1:], duration=durations, loop=0, **extra
    )


def _frame_times(count: int, fps: float, tick_ms: int) -> list[int]:
    """Frame durations in whole `tick_ms` steps whose running sum stays within half a step of
    the exact times (62.5 ms frames at 10 ms steps: 60, 70, 60, 60, ...)."""
    ends = [round(k * 1000 / fps / tick_ms) * tick_ms for k in range(count + 1)]
    return [max(tick_ms, ends[k + 1] - ends[k]) for k in range(count)]


def _encode_mp4(path: Path, frames: np.ndarray, fps: float, comment: str) -> None:
    av = require("av", "writing MP4 video")
    height, width = frames.shape[1:3]
    even = height % 2 == 0 and width % 2 == 0
    with av.open(str(path), mode="w", format="mp4") as container:
        container.metadata["comment"] = comment
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        stream.options = {"crf": MP4_CRF}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


def _write_frame_folder(
    path: Path,
    frames: np.ndarray,
    fps: float,
    metadata: dict[str, str],
    overwrite: bool,
    companion: Callable[[Path], Path] | None,
) -> Path:
    """PNG frames and video.json, built in a hidden folder beside `path` and renamed onto the
    first free name (a rename onto an existing non-empty folder fails, atomically)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(staging / FRAME_NAME.format(index), format="PNG")
        record = {"fps": fps, "frames": len(frames), "metadata": metadata}
        (staging / FRAMES_JSON).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
        if overwrite and (path.exists() or path.is_symlink()):
            _replace_frame_folder(staging, path)
            return path
        for number in range(MAX_FREE_NAME_TRIES):
            candidate = numbered(path, number)
            if companion is not None and companion(candidate).exists():
                continue
            try:
                os.rename(staging, candidate)  # fails on a file or a non-empty folder
                return candidate
            except OSError:
                continue
        raise FileExistsError(
            f"{path} and {MAX_FREE_NAME_TRIES - 1} numbered versions of it exist; choose another "
            "--output or pass --overwrite"
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _replace_frame_folder(staging: Path, path: Path) -> None:
    """--overwrite onto a frame folder this wrote before (never onto another folder or a file)."""
    from starflow_core.staging import replace_with

    if not (path.is_dir() and (path / FRAMES_JSON).is_file()):
        raise FileExistsError(
            f"{path} exists and is not a frame folder written by starflow (no {FRAMES_JSON}); "
            "--overwrite replaces only those. Choose another --output"
        )
    replace_with(staging, path)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ----- reading ----------------------------------------------------------------------------
def read_video(path: str | Path) -> Video:
    """Frames, fps and metadata of an MP4, GIF or WebP file or a folder of frames (ValueError
    naming the file when it holds no readable video)."""
    path = Path(path)
    if path.is_dir():
        return _read_frame_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video: {path}")
    fmt = video_format(path)
    if fmt == "MP4":
        return _read_mp4(path)
    if fmt in ("GIF", "WEBP"):
        return _read_animation(path)
    raise ValueError(f"{path}: not a video this reads; give an .mp4, .gif, .webp or a folder of frames")


def read_video_metadata(path: str | Path) -> dict[str, str]:
    """The metadata entries of a video written by `write_video` ({} when it has none)."""
    path = Path(path)
    if path.is_dir():
        return _frame_folder_record(path)[1]
    if video_format(path) == "MP4":
        av = require("av", "reading MP4 video")
        with _video_errors(path, "MP4"), av.open(str(path)) as container:
            return _entries(container.metadata.get("comment"))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _animation_entries(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable GIF or WebP file ({err})") from None


def video_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a video's frames, from its header (or first frame) alone."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ValueError(f"{path} holds no frames ({', '.join(FRAME_SUFFIXES)}); not a video folder")
        first = files[0]
    elif video_format(path) == "MP4":
        av = require("av", "reading MP4 video")
        with _video_errors(path, "MP4"), av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            return stream.height, stream.width
    else:
        first = path
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(first) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"{first} is not a readable frame or animation ({err})") from None


def _entries(text: str | bytes | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return {str(key): str(value) for key, value in values.items()} if isinstance(values, dict) else {}


def _animation_entries(image) -> dict[str, str]:
    if image.format == "GIF":
        return _entries(image.info.get("comment"))
    return _entries(image.getexif().get(EXIF_IMAGE_DESCRIPTION))


@contextlib.contextmanager
def _video_errors(path: Path, what: str):
    """Turn a decoder's error about `path` into a ValueError naming it."""
    av = require("av", f"reading {what} video")
    try:
        yield
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise ValueError(f"{path} is not a readable {what} video ({str(err)[:160]})") from None


def _read_mp4(path: Path) -> Video:
    with _video_errors(path, "MP4"):
        av = require("av", "reading MP4 video")
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            metadata = _entries(container.metadata.get("comment"))
    if not frames:
        raise ValueError(f"{path} is not a readable MP4 video (it holds no frames)")
    fps = float(metadata["fps"]) if "fps" in metadata else float(rate or 0) or 25.0
    return Video(np.stack(frames), fps, metadata)


def _read_animation(path: Path) -> Video:
    """A GIF or WebP, its frames expanded by their display times at the stored (or the
    shortest frame's) rate, undoing the writers' merging of identical frames."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    frames, starts = [], []
    try:
        with Image.open(path) as image:
            metadata = _animation_entries(image)
            clock = 0
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                starts.append(clock)
                clock += frame.info.get("duration") or GIF_DEFAULT_MS
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise ValueError(f"{path} is not a readable GIF or WebP video ({err})") from None
    if not frames:
        raise ValueError(f"{path} is not a readable GIF or WebP video (it holds no frames)")
    shortest = min(b - a for a, b in zip(starts, [*starts[1:], clock], strict=True))
    fps = float(metadata["fps"]) if "fps" in metadata else 1000.0 / shortest
    # frame k shows from starts[k]; at `fps` it fills positions round(start * fps / 1000) onward
    positions = [round(start * fps / 1000) for start in [*starts, clock]]
    repeats = [max(1, b - a) for a, b in zip(positions[:-1], positions[1:], strict=True)]
    return Video(np.repeat(np.stack(frames), repeats, axis=0), fps, metadata)


def _frame_folder_record(path: Path) -> tuple[float | None, dict[str, str], int | None]:
    """(fps, metadata, frame count) from a frame folder's video.json (None, {}, None without one)."""
    record_path = path / FRAMES_JSON
    if not record_path.is_file():
        return None, {}, None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        fps = float(record["fps"])
        metadata = {str(k): str(v) for k, v in record.get("metadata", {}).items()}
        count = int(record["frames"]) if "frames" in record else None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{record_path} is not a valid frame-folder record ({err})") from None
    return fps, metadata, count


def frame_files(path: Path) -> list[Path]:
    """The frames of a frame folder, in name order."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)


def _read_frame_folder(path: Path) -> Video:
    from PIL import Image, UnidentifiedImageError

    fps, metadata, count = _frame_folder_record(path)
    files = frame_files(path)
    if not files:
        raise ValueError(f"{path} holds no frames ({', '.join(FRAME_SUFFIXES)}); not a video folder")
    if count is not None and count != len(files):
        raise ValueError(f"{path}: {FRAMES_JSON} lists {count} frames but the folder holds {len(files)}")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"{file} is not a readable frame ({err})") from None
    if len({frame.shape for frame in frames}) > 1:
        raise ValueError(f"{path}: its frames differ in size; a video's frames share one size")
    return Video(np.stack(frames), fps if fps is not None else 0.0, metadata)
