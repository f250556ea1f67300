"""Bad input and faults lose nothing, print no traceback and make no silent nonsense.

The command-line cases (tests/helpers/fault_cases.py; run it as a module for the tally) and
the multi-step scenarios (fault_scenarios.py) of both twins: the torch twin's commands run in
this process, MLX's in one subprocess of their own. The library-level classes of fault are
in test_fault_classes.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.fault_cases import CASES, cuda_cases, run_case
from helpers.fault_files import damaged_checkpoint_files, edit_stepwise, first_checkpoint_fails
from helpers.fault_scenarios import (
    damaged_checkpoint,
    disk_full,
    interrupted_generate,
    second_trainer,
    signal_to_process_group,
    used_folder,
)
from helpers.fault_workspace import changes, judge, make_workspace, run_cli, snapshot
from helpers.training import TARFLOW_TINY, make_class_folder, overrides
from helpers.waiting import HANG_GUARD_S

from starflow_core.training.config import load_run_config

PARAMS = [(case, twin) for case in CASES + cuda_cases() for twin in case.twins]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("faults") / "ws")


@pytest.fixture(scope="module")
def mlx_outcomes(ws) -> dict[str, dict]:
    """The MLX twin's cases, run in one subprocess of their own (MLX commands switch BLAS)."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.helpers.fault_cases", "--mlx-cases", str(ws)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.splitlines()[-1])


@pytest.mark.parametrize("case, twin", PARAMS, ids=[f"{twin}-{case.name}" for case, twin in PARAMS])
def test_bad_input_is_one_clean_line_and_loses_nothing(case, twin, ws, request):
    if twin == "mlx":
        problems = request.getfixturevalue("mlx_outcomes")[case.name]["problems"]
    else:
        problems = run_case(case, twin, ws, in_process=True).problems
    assert not problems, problems


SCENARIO_NAMES = {
    used_folder: [
        "train-first-run",
        "train-fresh-run-in-used-folder",
        "train-resume-with-other-settings",
        "train-resume-on-other-data",
        "train-resume-removes-debris",
    ],
    damaged_checkpoint: ["train-truncated-state", "train-damaged-log-line"],
    second_trainer: ["train-second-trainer", "train-after-holder-killed"],
    damaged_checkpoint_files: [
        f"checkpoint-{name}"
        for name in (
            "run-json-invalid",
            "run-json-not-utf8",
            "run-json-a-list",
            "run-json-without-model",
            "data-json-invalid",
            "data-json-a-list",
            "state-progress-a-list",
            "state-progress-a-string",
        )
    ],
    first_checkpoint_fails: [
        "train-first-checkpoint-fails",
        "train-same-command-after-first-checkpoint-failed",
    ],
    edit_stepwise: ["edit-stepwise-output"],
}


def scenario_problems(scenario, twin: str, ws: Path, request) -> dict[str, list[str]]:
    if twin == "mlx":  # run with the MLX cases, in their subprocess
        outcomes = request.getfixturevalue("mlx_outcomes")
        return {name: outcomes[name]["problems"] for name in SCENARIO_NAMES[scenario]}
    outcomes = scenario(ws, twin, in_process=True)
    assert [o.name for o in outcomes] == SCENARIO_NAMES[scenario]
    return {o.name: o.problems for o in outcomes}


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_a_used_run_folder_is_refused_and_debris_is_removed(twin, ws, request):
    problems = scenario_problems(used_folder, twin, ws, request)
    assert not any(problems.values()), problems


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_a_damaged_checkpoint_offers_the_previous_one(twin, ws, request):
    problems = scenario_problems(damaged_checkpoint, twin, ws, request)
    assert not any(problems.values()), problems


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_every_damaged_checkpoint_file_offers_the_previous_checkpoint(twin, ws, request):
    problems = scenario_problems(damaged_checkpoint_files, twin, ws, request)
    assert not any(problems.values()), problems


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_a_failed_first_checkpoint_leaves_nothing_that_blocks_the_same_command(twin, ws, request):
    problems = scenario_problems(first_checkpoint_fails, twin, ws, request)
    assert not any(problems.values()), problems


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_an_edit_writes_its_stepwise_images(twin, ws, request):
    problems = scenario_problems(edit_stepwise, twin, ws, request)
    assert not any(problems.values()), problems


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_a_second_trainer_is_refused_a_dead_one_does_not_block(twin, ws, request):
    problems = scenario_problems(second_trainer, twin, ws, request)
    assert not any(problems.values()), problems


def test_mlx_checkpoint_write_failure_keeps_the_previous_one(ws):
    outcomes = disk_full(ws, "mlx")
    assert all(o.ok for o in outcomes), [(o.name, o.problems) for o in outcomes]


def test_torch_checkpoint_write_failure_keeps_the_previous_one(ws, monkeypatch):
    """The torch twin in this process: the training state's torch.save fails as on a full disk
    (the weights, written first, fail the same way in a subprocess: python -m tests.helpers.fault_cases)."""
    out = ws / "full_inproc"
    assert (
        run_cli(
            "torch",
            "train",
            ["--config", str(ws / "run.json"), "--out-dir", str(out), "--steps", "1"],
            ws,
            True,
        ).code
        == 0
    )
    kept = snapshot(out / "checkpoints")

    def no_space(*args, **kwargs):  # what torch's zip writer raises when a write fails
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", no_space)
    args = ["--config", str(ws / "run.json"), "--out-dir", str(out), "--resume", str(out), "--steps", "2"]
    result = run_cli("torch", "train", args, ws, in_process=True)
    outcome = judge(
        "disk-full",
        "torch",
        result,
        2,
        "step_00000001 is intact",
        changes(kept, snapshot(out / "checkpoints")),
    )
    assert outcome.ok, outcome.problems
    assert "is the disk full?" in result.messages[-1]


def test_sigterm_to_the_process_group_saves_with_dataloader_workers(ws):
    outcomes = signal_to_process_group(ws)
    assert all(o.ok for o in outcomes), [(o.name, o.problems) for o in outcomes]


def test_dataloader_workers_ignore_stop_signals(tmp_path, monkeypatch, capsys):
    """Deterministic twin of the process-group test: each worker signals itself while loading."""
    import signal

    from starflow_torch.data import ImageFolderDataset
    from starflow_torch.training import train

    real = ImageFolderDataset.__getitem__

    def signalled(self, ref):
        if torch.utils.data.get_worker_info() is not None:  # only in a worker process
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, ref)

    monkeypatch.setattr(ImageFolderDataset, "__getitem__", signalled)
    data = make_class_folder(tmp_path / "images")
    out = tmp_path / "run"
    result = train(
        load_run_config(
            None, [*overrides(TARFLOW_TINY, data=str(data), steps=3, num_workers=2), f"train.out_dir={out}"]
        )
    )
    assert result.progress.step == 3 and not result.interrupted  # the main process never saw a signal
    assert "DataLoader worker died" not in capsys.readouterr().err


def test_a_worker_dying_after_the_stop_signal_still_saves(tmp_path, monkeypatch, capsys):
    """The second defence: a DataLoader worker killed (here by SIGKILL, which nothing can ignore)
    once a stop signal has arrived: the unfinished step is dropped and the last complete one saved."""
    import signal

    from starflow_core.training.schedule import StopSignal
    from starflow_torch.data import ImageFolderDataset
    from starflow_torch.training import train

    def killed(self, ref):
        os.kill(os.getpid(), signal.SIGKILL)  # runs in the worker process

    monkeypatch.setattr(ImageFolderDataset, "__getitem__", killed)
    real_enter = StopSignal.__enter__

    def signalled(self):  # the stop signal has already arrived
        real_enter(self).received = True
        return self

    monkeypatch.setattr(StopSignal, "__enter__", signalled)
    data = make_class_folder(tmp_path / "images")
    out = tmp_path / "run"
    result = train(
        load_run_config(
            None, [*overrides(TARFLOW_TINY, data=str(data), num_workers=1), f"train.out_dir={out}"]
        )
    )
    assert result.interrupted and result.progress.step == 0 and result.checkpoint.name == "step_00000000"
    assert "DataLoader worker died after the stop signal" in capsys.readouterr().err


def test_mlx_ctrl_c_in_generate_leaves_only_complete_images(ws):
    outcomes = interrupted_generate(ws, "mlx")
    assert all(o.ok for o in outcomes), [(o.name, o.problems) for o in outcomes]


def test_torch_ctrl_c_in_generate_leaves_only_complete_images(ws, monkeypatch):
    from starflow_torch.pipeline import StarFlowPipeline

    real, calls = StarFlowPipeline.generate, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StarFlowPipeline, "generate", interrupted)
    out = ws / "interrupted_inproc"
    args = [
        "cat",
        "--model",
        str(ws / "labels"),
        "--n-images",
        "4",
        "--batch-size",
        "1",
        "--seed",
        "0",
        "--output",
        str(out / "a.png"),
        "--quiet",
    ]
    result = run_cli("torch", "generate", args, ws, in_process=True)
    assert result.code == 130 and len(result.messages) == 1, result.stderr
    assert "1 complete image(s) were written" in result.messages[0] and not result.traceback
    assert sorted(p.name for p in out.iterdir()) == ["a_0000_seed0.png"]  # whole, no temporary files


def test_ctrl_c_in_convert_keeps_the_old_output_and_no_staging(ws, monkeypatch):
    import starflow_core.convert as convert

    def interrupted(pth, config, out_dir, **kwargs):
        Path(out_dir, "model.safetensors").write_bytes(b"half a tensor")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "convert_official_checkpoint", interrupted)
    before = snapshot(ws)
    args = [
        "flow",
        str(ws / "official.pth"),
        "--config",
        str(ws / "official_config.json"),
        "-o",
        str(ws / "flow"),
        "--overwrite",
    ]
    outcome = judge(
        "convert-ctrl-c",
        "torch",
        run_cli("torch", "convert", args, ws, in_process=True),
        130,
        "interrupted",
        changes(before, snapshot(ws)),
    )
    assert outcome.ok, outcome.problems


def test_conversion_removes_stale_staging_of_dead_processes_only(ws):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid, host = int(dead.stdout), socket.gethostname()
    out = ws / "restaged"
    stale = ws / f".restaged.partial-{host}-{dead_pid}"
    live = ws / f".restaged.partial-{host}-{os.getpid()}-other"  # not ours to touch: another name
    alive = ws / f".restaged.partial-{host}-{os.getppid()}"
    for folder in (stale, live, alive):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    args = ["flow", str(ws / "official.pth"), "--config", str(ws / "official_config.json"), "-o", str(out)]
    assert run_cli("torch", "convert", args, ws, in_process=True).code == 0
    assert not stale.exists() and alive.exists() and live.exists()  # the live process's staging stays
    assert (out / "model.safetensors").is_file()
    for folder in (live, alive):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
