"""From what a user types (`--model`) to the parts of a pipeline on disk.

`resolve(source)` turns a folder path, a release name (e.g. "starflow-3b-t2i-256") or a Hub
repo id into `PipelineParts` (paths on disk). Framework-free: both twins call this.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from starflow_core.config import FlowConfig
from starflow_core.sources.hub import PIPELINE_PATTERNS, hub_snapshot
from starflow_core.sources.pipeline_folder import PipelineParts, read_pipeline_folder
from starflow_core.sources.releases import (
    ALIASES,
    EMBEDDED,
    RELEASES,
    release_by_name,
    resolve_release,
)
from starflow_core.sources.run_checkpoint import run_parts


def embedded_parts(name: str) -> PipelineParts:
    """An embedded demo model (package data) by name; a clear error where the package lacks it."""
    folder = EMBEDDED[name]
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded model {name} is not installed ({folder} is missing); reinstall the package"
        )
    return dataclasses.replace(read_pipeline_folder(folder), source=name)


def _looks_like_repo_id(source: str) -> bool:
    pieces = source.split("/")
    return len(pieces) == 2 and all(pieces) and not source.startswith((".", "~", "/"))


def resolve(
    source: str | Path | PipelineParts,
    *,
    flow_config: FlowConfig | None = None,
    dtype: str = "float32",
    strict: bool = False,
) -> PipelineParts:
    """Parts of the pipeline named by `source`: a folder, a release name, or a Hub repo id
    (already resolved parts are returned as they are).

    `flow_config` replaces a release's flow configuration (keeping its repos and file
    names); tests use it to stand a tiny checkpoint in for the 3B one. A release's flow is
    converted once into `dtype` ("float32" | "bfloat16" | "float16"); `strict` refuses
    tensors the model does not use (else skipped with a warning).
    """
    if isinstance(source, PipelineParts):
        return source
    path = Path(source).expanduser()
    trained = run_parts(path)  # a training run, its checkpoints/latest, or one checkpoint
    if trained is not None:
        return trained
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; --model takes a pipeline folder (convert a .pth first)")
        for name, folder in EMBEDDED.items():
            if path.resolve() == folder.resolve():  # named so metadata loads on any installation
                return dataclasses.replace(read_pipeline_folder(path), source=name)
        return read_pipeline_folder(path)
    if str(source) in EMBEDDED:
        return embedded_parts(str(source))
    release = release_by_name(str(source))
    if release is not None:
        if flow_config is not None:
            release = dataclasses.replace(release, config=flow_config)
        return dataclasses.replace(resolve_release(release, dtype, strict), source=release.name)
    if _looks_like_repo_id(str(source)):
        folder = hub_snapshot(str(source), PIPELINE_PATTERNS, ("model_index.json",))
        return dataclasses.replace(read_pipeline_folder(folder), source=str(source))
    raise ValueError(
        f"unknown model {str(source)!r}: not an existing folder, not a release name "
        f"({', '.join(sorted(RELEASES) + sorted(ALIASES) + sorted(EMBEDDED))}) and not a Hub repo id (owner/name)"
    )
