"""Training checkpoints of the MLX twin (layout and atomic commit: starflow_core.training.files).

training_state.safetensors holds the optimizer state as tensors named by their path in
the optimizer's state tree, and the counters and schedule as JSON in the safetensors
metadata: no pickle. The weights (model and EMA) are our format, so they load in
either twin; the training state continues a run in this twin only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from starflow_core.config import FlowConfig
from starflow_core.io import read_safetensors_header
from starflow_core.training.files import (
    MLX_STATE_NAME,
    check_resume_compatible,
    checkpoint_dir,
    commit_checkpoint,
)
from starflow_core.training.files import resolve_checkpoint as resolve_checkpoint_of
from starflow_core.training.schedule import Progress
from starflow_core.validation import parse_json

from ..checkpoint import write_safetensors
from ..model import StarFlow

STATE_NAME = MLX_STATE_NAME
STATE_FORMAT = 1
DENOISER_PREFIX = "denoiser_optimizer."

__all__ = [
    "Progress",
    "check_resume_compatible",
    "checkpoint_dir",
    "load_denoiser_optimizer_state",
    "load_training_state",
    "resolve_checkpoint",
    "save_checkpoint",
]


def write_weights(parameters: dict, config: FlowConfig, folder: Path) -> None:
    """save_pretrained for a parameter tree (the model's, or the EMA's)."""
    model = StarFlow(config)
    model.update(parameters)
    model.save_pretrained(folder)


def save_checkpoint(
    out_dir: str | Path,
    config: FlowConfig,
    run: dict[str, Any],
    parameters: dict,
    ema_parameters: dict | None,
    optimizer_state: dict,
    progress: Progress,
    keep: int,
    data: dict[str, Any] | None = None,
    denoiser_optimizer_state: dict | None = None,
) -> Path:
    """Write a complete checkpoint folder, point `latest` at it, prune old ones (the learned
    self-denoiser's optimizer, when the model has one, beside the flow's)."""
    tensors = {f"optimizer.{name}": value for name, value in tree_flatten(optimizer_state)}
    if denoiser_optimizer_state is not None:
        tensors.update(
            {f"{DENOISER_PREFIX}{name}": value for name, value in tree_flatten(denoiser_optimizer_state)}
        )
    metadata = {
        "format": str(STATE_FORMAT),
        "progress": json.dumps(progress.to_dict()),
        "scheduler": json.dumps({"kind": "warmup_cosine", "step": progress.step}),
    }

    def write_files(folder: Path) -> None:
        write_weights(parameters, config, folder)
        if ema_parameters is not None:
            write_weights(ema_parameters, config, folder / "ema")
        # the folder itself is temporary until committed, so the file needs no atomic rename
        write_safetensors(folder / STATE_NAME, tensors, metadata)

    return commit_checkpoint(out_dir, progress.step, run, write_files, keep, data)


def resolve_checkpoint(path: str | Path) -> Path:
    return resolve_checkpoint_of(path, STATE_NAME)


def load_training_state(folder: Path) -> tuple[Progress, dict]:
    """(progress counters, the flow's optimizer state tree) of a checkpoint folder."""
    path = folder / STATE_NAME
    read_safetensors_header(path)  # every entry checked: a clear error for a damaged file
    tensors, metadata = mx.load(str(path), return_metadata=True)
    if metadata.get("format") != str(STATE_FORMAT):
        raise ValueError(f"{path} has format {metadata.get('format')}, expected {STATE_FORMAT}")
    saved = parse_json(metadata.get("progress", ""), f"{path}: progress", "the checkpoint is damaged")
    progress = Progress.from_dict(saved, str(path))
    prefix = "optimizer."
    optimizer_state = tree_unflatten(
        [(name[len(prefix) :], value) for name, value in tensors.items() if name.startswith(prefix)]
    )
    return progress, optimizer_state


def load_denoiser_optimizer_state(folder: Path) -> dict:
    """The learned self-denoiser's optimizer state tree of a checkpoint folder."""
    tensors = mx.load(str(folder / STATE_NAME))
    state = [
        (name[len(DENOISER_PREFIX) :], v) for name, v in tensors.items() if name.startswith(DENOISER_PREFIX)
    ]
    if not state:
        raise ValueError(f"{folder / STATE_NAME} holds no optimizer state of the learned self-denoiser")
    return tree_unflatten(state)
