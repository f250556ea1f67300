"""File I/O shared by both twins: atomic writes and checked safetensors reads.

Everything written by this project goes to a temporary file in the target
directory first and is renamed into place, so a failure midway never leaves a
half-written file or destroys the previous version.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from starflow_core.validation import check_safetensors_header, parse_json, refuse_special_file


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, values: Mapping) -> None:
    atomic_write_text(path, json.dumps(values, indent=2) + "\n")


def read_safetensors_header(path: str | Path) -> dict:
    """Return the JSON header of a safetensors file, checked against the format (every tensor
    with a known dtype and data_offsets that fit its shape and the file), or a clear error."""
    path = Path(path)
    refuse_special_file(path, "the weights file")
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    fix = "re-download or re-convert it"
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is not a safetensors file (only {size} bytes); {fix}")
        header_len = int.from_bytes(prefix, "little")
        if header_len <= 0 or header_len > size - 8:
            raise ValueError(f"{path} is truncated or corrupt (bad header length); {fix}")
        header = parse_json(handle.read(header_len), f"{path}: the safetensors header", fix)
    return check_safetensors_header(header, path, size - 8 - header_len, fix)


def safetensors_shapes(header: Mapping) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (read_safetensors_header), metadata left out."""
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
