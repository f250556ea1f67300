"""Writing generated images as the command line does (and `GeneratedImages.save`): names from
`--output`, format from its suffix, metadata in each file, an optional JSON sidecar, grids,
and never an existing file replaced unless asked (starflow_core.generation.outputs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.generation.images import encode_image, enlarge_for_viewing, make_grid
from starflow_core.generation.outputs import (
    check_output_name,
    check_output_writable,
    grid_path,
    image_format,
    image_path,
    output_directory,
    sidecar_path,
    write_new_file,
)
from starflow_core.generation.record import flat_metadata, grid_parameters, parameters_json
from starflow_core.io import atomic_write_text


class ImageWriter:
    """Writes the images of one run under `output`; `written` lists every path, in order."""

    def __init__(
        self,
        output: Path,
        total: int,
        *,
        overwrite: bool = False,
        sidecar: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.output, self.total = Path(output), total
        self.overwrite, self.sidecar = overwrite, sidecar
        self.rank, self.world_size = rank, world_size
        self.written: list[Path] = []
        self._grid_cells: list[np.ndarray] = []
        self._grid_records: list[dict[str, Any]] = []

    def check(self) -> None:
        """Refuse an unknown suffix and prove the folder writable, before any compute."""
        check_output_name(self.output)
        check_output_writable(output_directory(self.output))

    def write_image(self, index: int, pixels: np.ndarray, parameters: dict[str, Any]) -> Path:
        """Image `index` of the run (uint8 HWC, enlarged for viewing when small) and its sidecar."""
        seed = parameters["seed"]
        return self._write(image_path(self.output, index, seed, self.total), pixels, parameters)

    def add_to_grid(self, pixels: np.ndarray, parameters: dict[str, Any]) -> None:
        self._grid_cells.append(enlarge_for_viewing(pixels))
        self._grid_records.append(parameters)

    def write_grid(self, columns: int | None = None) -> Path | None:
        """The grid of the images added (columns: one row per prompt, labelled with it)."""
        if not self._grid_cells:
            return None
        records = self._grid_records
        labels = None
        if columns is not None and any(record["prompt"] for record in records):
            labels = [records[row * columns]["prompt"] for row in range(len(records) // columns)]
        pixels = make_grid(self._grid_cells, columns, labels=labels)
        path = grid_path(self.output, self.rank, self.world_size)
        return self._write(path, pixels, grid_parameters(records, columns), enlarge=False)

    def _write(
        self, path: Path, pixels: np.ndarray, parameters: dict[str, Any], enlarge: bool = True
    ) -> Path:
        pixels = enlarge_for_viewing(pixels) if enlarge else pixels
        metadata = flat_metadata(parameters)
        fmt = image_format(path)
        final = write_new_file(
            path,
            lambda tmp: encode_image(tmp, pixels, metadata, fmt),
            overwrite=self.overwrite,
            companion=sidecar_path if self.sidecar else None,
        )
        self.written.append(final)
        if self.sidecar:
            atomic_write_text(sidecar_path(final), parameters_json(parameters))
            self.written.append(sidecar_path(final))
        return final


def write_steps(
    folder: Path,
    block_index: int,
    step: int,
    images: np.ndarray,
    indices: Sequence[int],
    seeds: Sequence[int],
) -> list[Path]:
    """`--stepwise-output-dir`: the decoded images after one flow block, one PNG per image,
    `<index>_seed<S>_step<k>_block<b>.png` (step k counts the blocks sampled so far)."""
    from starflow_core.generation.images import to_uint8

    written = []
    for pixels, index, seed in zip(to_uint8(images), indices, seeds, strict=True):
        path = Path(folder) / f"{index:04d}_seed{seed}_step{step}_block{block_index}.png"
        shown = enlarge_for_viewing(pixels)
        written.append(write_new_file(path, lambda tmp, shown=shown: encode_image(tmp, shown, {}, "PNG")))
    return written
