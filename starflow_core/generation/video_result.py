"""What a video pipeline call produced: `VideoGeneration` (numpy frames, the same in both twins)
and `GeneratedVideos`, what `pipe.video(...)` returns: the frames, seeds, fps and parameters of
each video, and `save()` writing them as the command line does."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.generation.images import to_uint8
from starflow_core.generation.precision import Precision
from starflow_core.generation.settings import GenerationSettings
from starflow_core.version import package_version


@dataclasses.dataclass
class VideoGeneration:
    """Videos of one call: `frames` float32 (B, T, H, W, C) in [-1, 1], channels last in both twins."""

    model: str
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings
    num_frames: int
    fps: int
    aspect_ratio: str | None
    height: int
    width: int
    denoise: str  # "learned" | "score" | "none"
    steps: int
    frames: np.ndarray
    precision: Precision | None = None
    source: str | None = None
    framework: str = ""
    seeds_drawn: bool = False
    image: str | None = None  # the first frame given (image-to-video)

    def uint8(self) -> np.ndarray:
        """(B, T, H, W, 3) uint8; grey videos repeated to RGB."""
        return to_uint8(self.frames)

    def parameters(self, index: int) -> dict[str, Any]:
        """Everything needed to make video `index` again (its metadata and `--metadata` sidecar)."""
        settings, precision = self.settings, self.precision or Precision()
        record = {
            "model": self.source or self.model,
            "model_name": self.model,
            "prompt": self.prompts[index],
            "seed": self.seeds[index],
            "guidance": settings.guidance,
            "sampler": "jacobi" if settings.jacobi else "sequential",
            "jacobi_block_size": settings.block_size,
            "jacobi_tol": settings.tol,
            "jacobi_max_iter": settings.max_iter,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "fps": self.fps,
            "denoise": self.denoise,
            "decoder": None,
            "dtype": precision.dtype,
            "text_dtype": precision.text_dtype,
            "quantize": precision.quantize,
            "text_quantize": precision.text_quantize,
            "group_size": precision.group_size,
            "steps": self.steps,
            "framework": self.framework,
            "version": package_version(),
        }
        if self.aspect_ratio is not None:
            record["aspect_ratio"] = self.aspect_ratio
        if self.image is not None:
            record["image"] = self.image
        return record


class GeneratedVideos:
    """Videos with `.frames` (uint8 (B, T, H, W, 3)), `.seeds`, `.fps`, `.prompts`,
    `.parameters` (one dict per video), `.generation` (the float arrays) and `.save`."""

    def __init__(self, generation: VideoGeneration):
        self.generation = generation
        self.frames = generation.uint8()

    @property
    def seeds(self) -> list[int]:
        return list(self.generation.seeds)

    @property
    def prompts(self) -> list[str]:
        return list(self.generation.prompts)

    @property
    def fps(self) -> int:
        return self.generation.fps

    @property
    def parameters(self) -> list[dict[str, Any]]:
        return [self.generation.parameters(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.frames[index]

    def __repr__(self) -> str:
        return (
            f"GeneratedVideos({len(self)} video(s) of {self.frames.shape[1]} frames at {self.fps} fps, "
            f"prompts={self.prompts!r}, seeds={self.seeds})"
        )

    def save(self, path: str | Path, *, overwrite: bool = False, metadata: bool = False) -> list[Path]:
        """Write the videos as the command line does; returns the paths written. The suffix picks
        the format: .mp4 (H.264, PyAV), .gif, .webp (animated), none: a folder of PNG frames;
        several videos are `<stem>_0000_seed<S><suffix>`, .... Existing files are kept unless
        `overwrite` (new ones take the next free name); `metadata` adds a JSON sidecar each."""
        from starflow_core.video.writer import VideoWriter

        writer = VideoWriter(Path(path), len(self), overwrite=overwrite, sidecar=metadata)
        writer.check()
        for index in range(len(self)):
            writer.write_video(index, self.frames[index], self.fps, self.generation.parameters(index))
        return writer.written
