"""Training checkpoints: one folder per save, complete or absent.

    <out_dir>/checkpoints/step_00000100/
        config.json, model.safetensors     the weights in our format (StarFlow / MLX from_pretrained)
        ema/config.json, ema/model.safetensors
        training_state.pt                  optimizer, schedule, step, data position, RNG states
        run.json                           the run configuration
    <out_dir>/checkpoints/latest           name of the newest complete checkpoint

A checkpoint is written into a temporary folder that is renamed into place only
when every file is complete; `latest` is then replaced atomically. A failure midway
leaves the previous checkpoint and `latest` untouched. training_state.pt holds only
tensors and plain Python containers, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from starflow_convert.config import FlowConfig
from starflow_convert.io import atomic_path, atomic_write_json, atomic_write_text

from ..model import StarFlow

STATE_NAME = "training_state.pt"
RUN_NAME = "run.json"
LATEST_NAME = "latest"
STATE_FORMAT = 1
# train keys that decide which samples and noise a step sees: a resumed run must keep them
DATA_DEFINING_KEYS = ("batch_size", "grad_accum", "seed", "buckets", "flip", "image_size", "noise_type")


@dataclass
class Progress:
    """The counters a resumed run continues from."""

    step: int = 0  # optimizer steps taken (skipped ones included)
    micro_step: int = 0  # accumulation micro-steps taken: seeds the noise of the next one
    skipped_steps: int = 0  # steps whose update was dropped (non-finite loss or gradient)
    corrupt_images: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global micro-batches of `epoch` already consumed

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


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
) -> Path:
    """Write a complete checkpoint folder (main process only), point `latest` at it, prune old ones."""
    final = checkpoint_dir(out_dir, training_state["progress"]["step"])
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_weights(model_state, config, tmp)
        if ema_state is not None:
            write_weights(ema_state, config, tmp / "ema")
        with atomic_path(tmp / STATE_NAME) as path:
            torch.save(training_state, path)
        atomic_write_json(tmp / RUN_NAME, run)
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / LATEST_NAME, final.name + "\n")
    saved = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in saved[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, a run's out_dir, or its checkpoints/ folder."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        latest = root / LATEST_NAME
        if latest.is_file():
            path = root / latest.read_text().strip()
            break
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(
            f"no training checkpoint at {path} "
            f"(expected {STATE_NAME}, or a run folder with checkpoints/latest)"
        )
    return path


def load_training_state(folder: Path) -> dict[str, Any]:
    state = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{folder / STATE_NAME} has format {state.get('format')}, expected {STATE_FORMAT}")
    return state


def check_resume_compatible(folder: Path, config: FlowConfig, train: dict[str, Any]) -> None:
    """Raise a ValueError naming every setting that prevents continuing the saved run exactly."""
    saved = json.loads((folder / RUN_NAME).read_text())
    saved_model = FlowConfig.from_dict(saved["model"]).to_dict()
    problems = [
        f"model.{key}: checkpoint {saved_model[key]!r}, now {value!r}"
        for key, value in config.to_dict().items()
        if saved_model[key] != value
    ]
    problems += [
        f"train.{key}: checkpoint {saved['train'].get(key)!r}, now {train[key]!r}"
        for key in DATA_DEFINING_KEYS
        if saved["train"].get(key) != train[key]
    ]
    if problems:
        raise ValueError(
            f"cannot resume from {folder}: the configuration differs from the saved run:\n  "
            + "\n  ".join(problems)
            + "\nresume with the run's own config (its run.json) or start a new run"
        )
