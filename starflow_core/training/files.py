"""What a training run writes to disk, shared by both trainers (framework-free).

    <out_dir>/log.jsonl                    one JSON object per logged step
    <out_dir>/loss.png                     the loss curve
    <out_dir>/samples/step_XXXXXXXX.png    sample grids
    <out_dir>/checkpoints/step_XXXXXXXX/   one folder per save, complete or absent:
        config.json, model.safetensors     the weights in our format (either twin's from_pretrained)
        ema/config.json, ema/model.safetensors
        <training state>                   optimizer, schedule, counters (framework-specific file)
        run.json                           the run configuration
        data.json                          what data it was trained on (a resume on other data is refused)
    <out_dir>/checkpoints/latest           name of the newest complete checkpoint
    <out_dir>/.lock                        held by the trainer writing the folder (run_folder.py)

A checkpoint is written into a temporary folder that is renamed into place only when
every file is complete; `latest` is then replaced atomically. A failure midway leaves
the previous checkpoint and `latest` untouched. At every moment of a save, `latest` names
a complete checkpoint, also when a step is saved again (a resumed run passing a saved step).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from starflow_core.command_line import one_line
from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path, atomic_write_json, atomic_write_text
from starflow_core.validation import field, read_json_object, read_text

RUN_NAME = "run.json"
DATA_NAME = "data.json"  # the fingerprint of the data set a checkpoint was trained on
LATEST_NAME = "latest"
# the training-state file of each twin: a checkpoint of one continues only in that twin
TORCH_STATE_NAME = "training_state.pt"
MLX_STATE_NAME = "training_state.safetensors"
# train keys that decide which samples and noise a step sees: a resumed run must keep them
DATA_DEFINING_KEYS = ("batch_size", "grad_accum", "seed", "buckets", "flip", "image_size", "noise_type")


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:08d}"


def step_of(folder: Path) -> int | None:
    """The step number of a checkpoint folder name (step_00000012 -> 12), None for other names."""
    match = re.fullmatch(r"step_(\d+)", folder.name)
    return int(match[1]) if match else None


def saved_checkpoints(root: Path) -> list[Path]:
    """The checkpoint folders under `root` (a run's checkpoints/), oldest step first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and step_of(p) is not None), key=step_of)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous one is intact."""


def commit_checkpoint(
    out_dir: str | Path,
    step: int,
    run: dict[str, Any],
    write_files: Callable[[Path], None],
    keep: int,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder, point `latest` at it and prune all but `keep`.

    `write_files(folder)` writes the weights and the training state into a fresh folder;
    `data` (the data set's fingerprint) is saved beside them, for resume checks.
    """
    final = checkpoint_dir(out_dir, step)
    root = final.parent
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        write_files(tmp)
        atomic_write_json(tmp / RUN_NAME, run)
        if data is not None:
            atomic_write_json(tmp / DATA_NAME, data)
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            _move_latest_off(root, final)
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST_NAME, final.name + "\n")
    except OSError as err:
        latest = root / LATEST_NAME
        previous = latest.read_text().strip() if latest.is_file() else None
        kept = (
            f"the previous checkpoint {root / previous} is intact; free space and continue from it "
            f"with --resume {out_dir}"
            if previous
            else "no earlier checkpoint exists, so the run's files are removed: free space and run the same "
            "command again"
        )
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} in {root} ({err.strerror or err}); {kept}"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stand_in in root.glob(".step_*.previous-*"):  # latest has moved on to `final`
        shutil.rmtree(stand_in, ignore_errors=True)
    # the one just written (which `latest` names) stays, with the keep - 1 highest steps of the
    # others (by step number, not by name: an unpadded step_9 sorts after step_00000010)
    others = [p for p in saved_checkpoints(root) if p.name != final.name]
    for old in others[: max(0, len(others) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _move_latest_off(root: Path, folder: Path) -> None:
    """If `latest` names `folder`, point it at a stand-in: a copy of `folder` made of hard links
    (no data is copied; checkpoint files are never modified in place), so that `folder` can be
    replaced while `latest` still names a complete checkpoint."""
    latest = root / LATEST_NAME
    if not latest.is_file() or latest.read_text().strip() != folder.name:
        return
    stand_in = root / f".{folder.name}.previous-{os.getpid()}"
    shutil.rmtree(stand_in, ignore_errors=True)
    shutil.copytree(folder, stand_in, copy_function=_link_or_copy)
    atomic_write_text(latest, stand_in.name + "\n")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


class DamagedCheckpointError(ValueError):
    """A checkpoint's files cannot be read (truncated, corrupt)."""


def read_checkpoint_json(folder: Path, name: str) -> dict[str, Any]:
    """run.json or data.json of checkpoint `folder`: a JSON object, or a DamagedCheckpointError
    offering the previous checkpoint."""
    with reading_checkpoint(folder):
        return read_json_object(folder / name, "the checkpoint is damaged")


@contextlib.contextmanager
def reading_checkpoint(folder: Path) -> Iterator[None]:
    """Turn a failure to read the files of checkpoint `folder` into an error offering the
    previous intact checkpoint of the same run."""
    try:
        yield
    except DamagedCheckpointError:
        raise
    except (
        OSError,
        ValueError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        KeyError,  # a saved structure missing a part the reader needs
        TypeError,
    ) as err:
        step = step_of(folder)
        others = [p for p in saved_checkpoints(folder.parent) if step is not None and step_of(p) < step]
        fix = (
            f"resume from the previous checkpoint instead: --resume {others[-1]}"
            if others
            else "no earlier checkpoint of this run exists"
        )
        detail = one_line(str(err)).split(". ")[0][:200]  # torch's zip errors run on for lines
        raise DamagedCheckpointError(f"checkpoint {folder} cannot be read ({detail}); {fix}") from err


def resolve_checkpoint(path: str | Path, state_name: str) -> Path:
    """A checkpoint folder from itself, a run's out_dir, or its checkpoints/ folder."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        latest = root / LATEST_NAME
        if latest.is_file():
            path = root / read_text(latest, "the checkpoint pointer").strip()
            break
    if not (path / state_name).is_file():
        other = TORCH_STATE_NAME if state_name == MLX_STATE_NAME else MLX_STATE_NAME
        if (path / other).is_file():
            writer = "torch" if other == TORCH_STATE_NAME else "MLX"
            raise FileNotFoundError(
                f"{path} was written by the {writer} trainer; its optimizer state does not carry over. "
                f"Start a new run from its weights instead: --set train.init_weights={path}"
            )
        raise FileNotFoundError(
            f"no training checkpoint at {path} "
            f"(expected {state_name}, or a run folder with checkpoints/latest)"
        )
    return path


def check_resume_compatible(folder: Path, config: FlowConfig, train: dict[str, Any]) -> None:
    """Raise a ValueError naming every setting that prevents continuing the saved run exactly."""
    saved = read_checkpoint_json(folder, RUN_NAME)
    with reading_checkpoint(folder):
        for section in ("model", "train"):
            field(saved, section, "object", str(folder / RUN_NAME), "the checkpoint is damaged")
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


class JsonlLog:
    """Append-only log, one JSON object per line; a resumed run drops lines past its step.

    A damaged line (a run killed mid-write, a disk that filled up) is skipped with a warning
    naming the file and line: the log is a record, the checkpoint is what a run resumes from.
    """

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            kept = [record for record in self.records(warn=True) if record["step"] <= resume_step]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self, warn: bool = False) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        text = self.path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("no step number")
            except ValueError:
                if warn:
                    print(
                        f"warning: {self.path}, line {number} is damaged; it is left out of the log",
                        file=sys.stderr,
                    )
                continue
            records.append(record)
        return records


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the curve is a convenience; the JSONL log has the numbers
        return
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    if not records:
        return
    steps = [r["step"] for r in records]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, [r["loss"] for r in records], label="loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats / dim)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def latent_preview(channels_first: np.ndarray) -> np.ndarray:
    """(B, C, H, W) latents -> (B, H, W, 3) uint8: the first three channels, min-max per image."""
    channels = channels_first[:, :3].astype(np.float32)
    if channels.shape[1] < 3:
        channels = np.concatenate([channels] * 3, axis=1)[:, :3]
    low = channels.min(axis=(1, 2, 3), keepdims=True)
    high = channels.max(axis=(1, 2, 3), keepdims=True)
    images = np.round((channels - low) / np.maximum(high - low, 1e-6) * 255)
    return images.transpose(0, 2, 3, 1).astype(np.uint8)


def grid(images: np.ndarray, rows: int) -> np.ndarray:
    """(B, H, W, 3) -> one (rows*H, cols*W, 3) image, row-major, 2 px gaps."""
    count, height, width, _ = images.shape
    cols = -(-count // rows)
    gap = 2
    canvas = np.zeros((rows * (height + gap) - gap, cols * (width + gap) - gap, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[
            r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width
        ] = image
    return canvas


def save_png(image: np.ndarray, path: Path, text: dict[str, str]) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
