"""Where generated images go: output folders and file names."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


# ----- outputs --------------------------------------------------------------------------
def check_output_writable(directory: str | Path) -> Path:
    """Create `directory` if needed and prove that a file can be written there, before any compute."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".starflow-write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"cannot write to output directory {directory} ({err.strerror or err}); "
            "choose another --output or fix its permissions"
        ) from err
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"output directory {directory} is not writable; choose another --output")
    return directory


# ----- outputs ----------------------------------------------------------------------------
def output_directory(output: Path) -> Path:
    return output.parent if output.suffix.lower() == ".png" else output


def image_path(output: Path, index: int, seed: int, total: int) -> Path:
    """Where image `index` (global over all ranks, so names never collide) goes."""
    if output.suffix.lower() == ".png":
        if total == 1:
            return output
        return output.with_name(f"{output.stem}_{index:04d}_seed{seed}.png")
    return output / f"{index:04d}_seed{seed}.png"


def grid_path(output: Path, rank: int, world_size: int) -> Path:
    path = output if output.suffix.lower() == ".png" else output / "grid.png"
    return path.with_name(f"{path.stem}_rank{rank}.png") if world_size > 1 else path
