"""Writing generated videos as the command line will (and a result object's `save`): names from
`--output`, format from its suffix, every parameter in the file, an optional JSON sidecar, and
never an existing file replaced unless asked (the video twin of generation.writer.ImageWriter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.generation.images import enlarge_for_viewing
from starflow_core.generation.outputs import check_output_writable
from starflow_core.generation.record import flat_metadata, parameters_json
from starflow_core.io import atomic_write_text
from starflow_core.video.files import check_video_output, video_format, write_video


def video_path(output: Path, index: int, seed: int, total: int) -> Path:
    """Where video `index` of a run goes before the no-overwrite numbering: `output` itself for
    one video, `<stem>_<index>_seed<S><suffix>` (a frame folder: `<name>_<index>_seed<S>`) for several."""
    output = Path(output)
    if total == 1:
        return output
    suffix = output.suffix if video_format(output) != "FRAMES" else ""
    stem = output.stem if suffix else output.name
    return output.with_name(f"{stem}_{index:04d}_seed{seed}{suffix}")


def video_sidecar_path(video: Path) -> Path:
    """The JSON beside a video (`--metadata`): fox.mp4 -> fox.json, frames folder fox -> fox.json."""
    video = Path(video)
    return (
        video.with_suffix(".json")
        if video_format(video) != "FRAMES"
        else video.with_name(video.name + ".json")
    )


class VideoWriter:
    """Writes the videos of one run under `output`; `written` lists every path, in order."""

    def __init__(self, output: Path, total: int, *, overwrite: bool = False, sidecar: bool = False):
        self.output, self.total = Path(output), total
        self.overwrite, self.sidecar = overwrite, sidecar
        self.written: list[Path] = []

    def check(self) -> None:
        """Refuse an image or unknown suffix, a missing PyAV for .mp4, and an unwritable folder,
        before any compute."""
        check_video_output(self.output)
        check_output_writable(self.output.parent)

    def write_video(self, index: int, frames: np.ndarray, fps: float, parameters: dict[str, Any]) -> Path:
        """Video `index` of the run: uint8 frames (T, H, W, 3), each enlarged for viewing when
        small (as images are), with every parameter in the file and, if asked, in a sidecar."""
        frames = np.stack([enlarge_for_viewing(frame) for frame in frames])
        path = video_path(self.output, index, parameters["seed"], self.total)
        final = write_video(
            path,
            frames,
            fps,
            flat_metadata(parameters),
            overwrite=self.overwrite,
            companion=video_sidecar_path if self.sidecar else None,
        )
        self.written.append(final)
        if self.sidecar:
            atomic_write_text(video_sidecar_path(final), parameters_json(parameters))
            self.written.append(video_sidecar_path(final))
        return final
