"""Checkpoint folders are committed so that a kill at any moment leaves `latest` naming a complete
checkpoint (starflow_core.training.files.commit_checkpoint, used by both trainers)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from starflow_core.training import files
from starflow_core.training.files import TORCH_STATE_NAME, commit_checkpoint, resolve_checkpoint


class Killed(BaseException):
    """The process dies here (BaseException: no `except Exception` may swallow it)."""


def writer(content: str):
    def write_files(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text(content)
        (folder / "ema").mkdir()
        (folder / "ema" / "model.safetensors").write_text(content)
        (folder / TORCH_STATE_NAME).write_text(content)

    return write_files


def saved_content(out: Path) -> str:
    """The content of the checkpoint `latest` names, which must be complete and from one save."""
    folder = resolve_checkpoint(out, TORCH_STATE_NAME)
    contents = {
        (folder / name).read_text()
        for name in ("model.safetensors", "ema/model.safetensors", TORCH_STATE_NAME)
    }
    assert (folder / files.RUN_NAME).is_file(), folder
    assert len(contents) == 1, f"{folder} mixes two saves: {contents}"
    return contents.pop()


def kill_at(monkeypatch, operation: int) -> list[str]:
    """Make the `operation`-th file-system change that renames or removes things raise Killed."""
    done: list[str] = []
    for module, name in ((os, "replace"), (os, "link"), (shutil, "rmtree"), (shutil, "copy2")):
        real = getattr(module, name)

        def spy(*args, real=real, name=name, **kwargs):
            if len(done) == operation:
                raise Killed(name)
            done.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return done


@pytest.mark.parametrize("step", [2, 3], ids=["same-step-saved-again", "next-step"])
def test_a_kill_anywhere_in_a_save_leaves_latest_on_a_complete_checkpoint(tmp_path, monkeypatch, step):
    operation = 0
    while True:
        out = tmp_path / f"kill_{operation}"
        commit_checkpoint(out, 2, {"run": 1}, writer("first"), keep=2)
        with monkeypatch.context() as patch:
            done = kill_at(patch, operation)
            try:
                commit_checkpoint(out, step, {"run": 1}, writer("second"), keep=2)
                finished = True
            except Killed:
                finished = False
        assert saved_content(out) in ({"first", "second"} if not finished else {"second"}), (operation, done)
        if finished:
            break
        operation += 1
    assert operation >= 4  # the kill points really covered the save (staging, swap, latest, cleanup)
    # and what a finished save leaves: the new checkpoint, named by latest, no stand-ins or staging
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        {"latest", "step_00000002", f"step_{step:08d}"}
    )


def test_keep_never_prunes_the_checkpoint_just_written(tmp_path):
    """A fresh run in a used folder: older runs' later steps must not push out the new one."""
    for step in (5, 6, 7):
        commit_checkpoint(tmp_path, step, {}, writer(f"old {step}"), keep=2)
    commit_checkpoint(tmp_path, 1, {}, writer("new 1"), keep=2)
    assert saved_content(tmp_path) == "new 1"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
        "step_00000001",
        "step_00000007",
    ]
