"""The version of this library: the package's (pyproject.toml reads it from here), `--version`,
PNG metadata and pipeline folders."""

from __future__ import annotations

__version__ = "0.2.0"  # 0.1.0 was the first release (the starflow-convert / starflow-generate names)


def package_version() -> str:
    """This source tree's version (an editable install's metadata can lag behind it)."""
    return __version__
