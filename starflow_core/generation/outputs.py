"""Where generated images go: output folders, file names, formats, and never overwriting.

`--output` names a file or a folder: a path with an image suffix (.png, .jpg, .jpeg, .webp)
is a file in that format; a path without a suffix (or ending in a slash, or an existing
folder) is a folder of PNGs. An existing file is never replaced unless `overwrite`: the
new image takes the first free name `<stem>_1<suffix>`, `<stem>_2<suffix>`, ... (as mflux
does), claimed atomically, so two runs writing at once cannot take the same name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MAX_FREE_NAME_TRIES = 10_000  # <stem>_1 ... <stem>_9999, then an error rather than a long scan


# ----- what --output names ----------------------------------------------------------------
def is_folder_output(output: str | Path) -> bool:
    """A folder: an existing folder, a path ending in a slash, or one without a suffix."""
    text = str(output)
    path = Path(output)
    return path.is_dir() or text.endswith(("/", os.sep)) or path.suffix == ""


def check_output_name(output: str | Path) -> None:
    """Refuse a file name whose suffix is no image format we write (before any compute)."""
    if is_folder_output(output):
        return
    suffix = Path(output).suffix
    if suffix.lower() not in IMAGE_FORMATS:
        raise ValueError(
            f"--output {output}: {suffix!r} is not an image format this writes; end the name in "
            f"{', '.join(IMAGE_FORMATS)}, or give a folder (a name without a suffix)"
        )


def image_format(path: Path) -> str:
    """PIL's format name for `path`'s suffix (PNG, JPEG, WEBP)."""
    try:
        return IMAGE_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown image suffix; use one of {', '.join(IMAGE_FORMATS)}") from None


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


def output_directory(output: Path) -> Path:
    return Path(output) if is_folder_output(output) else Path(output).parent


# ----- file names -------------------------------------------------------------------------
def image_path(output: Path, index: int, seed: int, total: int) -> Path:
    """Where image `index` (global over all ranks, so names never collide) goes, before the
    no-overwrite numbering."""
    if not is_folder_output(output):
        if total == 1:
            return output
        return output.with_name(f"{output.stem}_{index:04d}_seed{seed}{output.suffix}")
    return output / f"{index:04d}_seed{seed}.png"


def grid_path(output: Path, rank: int, world_size: int) -> Path:
    path = output / "grid.png" if is_folder_output(output) else output
    return path.with_name(f"{path.stem}_rank{rank}{path.suffix}") if world_size > 1 else path


def sidecar_path(image: Path) -> Path:
    """The JSON file beside an image that holds its generation parameters (`--metadata`)."""
    return image.with_suffix(".json")


def numbered(path: Path, number: int) -> Path:
    return path if number == 0 else path.with_name(f"{path.stem}_{number}{path.suffix}")


# ----- writing without overwriting ----------------------------------------------------------
def write_new_file(
    path: Path,
    write: Callable[[Path], None],
    overwrite: bool = False,
    companion: Callable[[Path], Path] | None = None,
) -> Path:
    """Write a file through `write(tmp_path)` and move it to `path`, or, when `path` (or its
    `companion(path)`, e.g. the JSON sidecar) exists and not `overwrite`, to the first free
    `<stem>_N<suffix>`. Returns the path written. The temporary file lives beside the target
    and is removed on failure, so an interrupted write leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file permissions
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
            return path
        for number in range(MAX_FREE_NAME_TRIES):
            candidate = numbered(path, number)
            if companion is not None and companion(candidate).exists():
                continue
            if _claim(tmp, candidate):
                return candidate
        raise FileExistsError(
            f"{path} and {MAX_FREE_NAME_TRIES - 1} numbered versions of it exist; choose another "
            "--output or pass --overwrite"
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _claim(tmp: Path, target: Path) -> bool:
    """Give `tmp` the name `target` only if nothing has it (a hard link fails on an existing
    name, atomically); filesystems without hard links fall back to check-then-rename."""
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:
        if target.exists() or target.is_symlink():
            return False
        os.replace(tmp, target)
        return True
