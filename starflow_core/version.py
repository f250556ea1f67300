"""The installed version of this library (written into PNG metadata and pipeline folders)."""

from __future__ import annotations


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("starflow-mlx")
    except PackageNotFoundError:
        return "0.1.0"
