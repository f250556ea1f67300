"""Training checkpoints of the torch twin (layout and atomic commit: starflow_core.training.files).

training_state.pt holds the optimizer, schedule, counters and RNG states as tensors and
plain Python containers only, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from starflow_core.command_line import one_line
from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path
from starflow_core.training.files import (
    TORCH_STATE_NAME,
    check_resume_compatible,
    checkpoint_dir,
    commit_checkpoint,
)
from starflow_core.training.files import resolve_checkpoint as resolve_checkpoint_of
from starflow_core.training.schedule import Progress
from starflow_core.validation import expect, field

from ..model import StarFlow

STATE_NAME = TORCH_STATE_NAME
STATE_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """This process's global RNG states as tensors and plain containers."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_weights(state: dict[str, torch.Tensor], config: FlowConfig, folder: Path) -> None:
    """save_pretrained for a state_dict: the model is built on the meta device, no copy."""
    with torch.device("meta"):
        model = StarFlow(config)
    model.load_state_dict(state, assign=True)
    model.save_pretrained(folder)


def save_checkpoint(
    out_dir: str | Path,
    config: FlowConfig,
    run: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None,
    training_state: dict[str, Any],
    keep: int,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder (main process only), point `latest` at it, prune old ones."""

    def write_files(folder: Path) -> None:
        write_weights(model_state, config, folder)
        if ema_state is not None:
            write_weights(ema_state, config, folder / "ema")
        with atomic_path(folder / STATE_NAME) as path:
            try:
                torch.save(training_state, path)
            except RuntimeError as err:  # torch's writer reports a full disk as "enforce fail ..."
                raise OSError(f"cannot write {path} ({one_line(str(err))}); is the disk full?") from err

    return commit_checkpoint(out_dir, training_state["progress"]["step"], run, write_files, keep, data)


def resolve_checkpoint(path: str | Path) -> Path:
    return resolve_checkpoint_of(path, STATE_NAME)


def load_training_state(folder: Path) -> dict[str, Any]:
    """The saved training state, checked for shape (the trainer reads every part of it)."""
    path = folder / STATE_NAME
    state = torch.load(path, map_location="cpu", weights_only=True)
    fix = "the checkpoint is damaged"
    expect(state, "object", str(path), fix)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} has format {state.get('format')}, expected {STATE_FORMAT}")
    state["progress"] = Progress.from_dict(state.get("progress"), str(path)).to_dict()
    optimizer = field(state, "optimizer", "object", str(path), fix)
    field(optimizer, "state", "object", f"{path}: optimizer", fix)
    field(optimizer, "param_groups", "list", f"{path}: optimizer", fix)
    rng = field(state, "rng", "list", str(path), fix)
    if not rng or not all(isinstance(r, dict) and {"python", "numpy", "torch"} <= set(r) for r in rng):
        raise ValueError(f"{path}: the saved random number generator states are damaged")
    return state


__all__ = [
    "Progress",
    "check_resume_compatible",
    "checkpoint_dir",
    "load_training_state",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
