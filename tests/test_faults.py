"""Issue 12: bad input and faults lose nothing, print no traceback and make no silent nonsense.

The command-line cases and scenarios live in tests/helpers/fault_cases.py (run it as a module
for the tally); here they run with the torch twin in this process and MLX in subprocesses.
Below them, the same classes of fault at the library level.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers.fault_cases import (
    CASES,
    cuda_cases,
    damaged_checkpoint,
    disk_full,
    interrupted_generate,
    judge,
    run_case,
    second_trainer,
    signal_to_process_group,
    used_folder,
)
from helpers.fault_workspace import changes, make_image_modes, make_workspace, run_cli, snapshot
from helpers.tiny_pipeline import TINY_LABEL_FLOW
from helpers.training import TARFLOW_TINY, make_caption_folder, make_class_folder, overrides

import starflow_mlx
import starflow_torch
from starflow_core.config import FlowConfig
from starflow_core.generation.settings import GenerationSettings
from starflow_core.staging import remove_stale_staging, staged_folder, staging_path
from starflow_core.training.config import TrainConfig, load_run_config
from starflow_core.training.files import LATEST_NAME, commit_checkpoint
from starflow_core.training.image_folders import ImageFolder

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
        timeout=600,
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


def test_a_swap_cut_short_puts_the_previous_version_back(tmp_path):
    """kill -9 between the swap's two renames: the next run restores the previous folder."""
    target = tmp_path / "flow"
    old = staging_path(target, "old").with_name(f".flow.old-{socket.gethostname()}-999999999")
    old.mkdir()
    (old / "config.json").write_text("{}")
    remove_stale_staging(tmp_path)
    assert (target / "config.json").read_text() == "{}" and not old.exists()


def test_a_failed_staged_write_leaves_the_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(OSError), staged_folder(target, overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
        raise OSError(28, "No space left on device")
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left
    # the swap itself fails after the old folder was moved aside: it is moved back
    real, calls = os.replace, []

    def second_rename_fails(source, destination):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(source, destination)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError), staged_folder(target, overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
    monkeypatch.undo()
    assert (target / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_folder(target, overwrite=True) as staging:
        (staging / "keep.txt").write_text("new")
    assert (target / "keep.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ----- library level -----------------------------------------------------------------------------
def test_pruning_sorts_by_step_number_and_keeps_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_9", "step_00000010", "step_00000100"):  # an unpadded old name sorts wrongly by name
        (root / name).mkdir(parents=True)

    def write(folder: Path) -> None:
        folder.mkdir()

    commit_checkpoint(tmp_path, 101, {}, write, keep=2)
    assert sorted(p.name for p in root.iterdir()) == [LATEST_NAME, "step_00000100", "step_00000101"]
    # a resumed earlier step is the newest checkpoint: `latest` names it, and it is never pruned
    commit_checkpoint(tmp_path, 50, {}, write, keep=1)
    assert (root / LATEST_NAME).read_text().strip() == "step_00000050" and (root / "step_00000050").is_dir()


def test_labels_out_of_range_are_refused_by_both_twins():
    mlx_model, torch_model = starflow_mlx.StarFlow(TINY_LABEL_FLOW), starflow_torch.StarFlow(TINY_LABEL_FLOW)
    x_mlx, x_torch = mx.zeros((1, 8, 8, 3)), torch.zeros(1, 3, 8, 8)
    for label in (12, 3, -2):  # 3 classes: 0..2, and -1 (the null label)
        with pytest.raises(ValueError, match=r"class labels must be 0\.\.2"):
            mlx_model.log_prob(x_mlx, mx.array([label]))
        with pytest.raises(ValueError, match=r"class labels must be 0\.\.2"):
            mlx_model.sample(x_mlx, mx.array([label]))
        with pytest.raises(ValueError, match=r"class labels must be 0\.\.2"):
            torch_model.log_prob(x_torch, torch.tensor([label]))
    assert np.isfinite(np.array(mlx_model.log_prob(x_mlx, mx.array([2])))).all()
    assert torch.isfinite(torch_model.log_prob(x_torch, torch.tensor([-1]))).all()


def test_image_modes_convert_correctly_or_are_refused_by_name(tmp_path):
    make_image_modes(tmp_path / "modes")
    for channels, red in ((1, 60), (3, 200)):  # red 200 is grey round(0.299 * 200) = 60
        folder = ImageFolder(tmp_path, "none", 8, 2, channels=channels)
        names = [p.name for p in folder.files]
        pixels = {n: folder.read_pixels(i, False) for i, n in enumerate(names)}
        to_byte = lambda a: np.round((a[..., 0] + 1) * 127.5)  # [-1, 1] back to 0..255
        assert np.all(to_byte(pixels["grey16.png"]) == 128)  # 32896 / 257, not saturated to 255
        for name in ("rgba.png", "palette.png"):
            assert np.all(to_byte(pixels[name])[:3] == 255) and np.all(to_byte(pixels[name])[5:] == red), name
        assert pixels["float.tif"] is None
        assert "32-bit float image" in folder.why_unreadable(names.index("float.tif"))


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"file_name": 123, "text": "a"}', "'file_name' must be a file name string"),
        (b'{"file_name": "0.png", "text": "caf\xe9"}', "line 2 is not UTF-8"),
        (b'{"file_name": "../../etc/hostname", "text": "a"}', "leaves the data set folder"),
        (b'{"file_name": "/etc/hostname", "text": "a"}', "leaves the data set folder"),
    ],
    ids=["number", "latin-1", "dot-dot", "absolute"],
)
def test_metadata_faults_name_the_line(line, message, tmp_path):
    folder = make_caption_folder(tmp_path / "data", count=2)
    metadata = folder / "metadata.jsonl"
    first = metadata.read_bytes().splitlines()[0]
    metadata.write_bytes(first + b"\n" + line + b"\n")
    with pytest.raises(ValueError, match=message) as info:
        ImageFolder(folder, "text", 8, 2)
    assert f"{metadata}, line 2" in str(info.value)


def test_wrong_types_are_named_and_lossless_conversions_made():
    assert FlowConfig(rope=1, sos=0, layers_per_block=[2], num_blocks=2).layers_per_block == (2, 2)
    config = TrainConfig(data="x", lr="1e-4", steps=1e3, betas=[0.9, 0.99])
    assert (config.lr, config.steps, config.betas) == (1e-4, 1000, (0.9, 0.99))
    for make, message in [
        (lambda: FlowConfig(channels="128"), "FlowConfig.channels='128': must be an integer"),
        (lambda: FlowConfig(rope="yes"), "FlowConfig.rope='yes': must be true or false"),
        (
            lambda: FlowConfig(quantization=[4]),
            "FlowConfig.quantization=\\[4\\]: must be a list of 2 integers",
        ),
        (lambda: TrainConfig(data="x", steps=2.5), "TrainConfig.steps=2.5: must be an integer"),
        (lambda: TrainConfig(data="x", flip="no"), "TrainConfig.flip='no': must be true or false"),
        (lambda: TrainConfig(data=3), "TrainConfig.data=3: must be a string"),
        (lambda: GenerationSettings(guidance=float("inf")), "GenerationSettings.guidance=inf"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


@pytest.mark.parametrize("twin", ["mlx", "torch"])
def test_weights_made_non_finite_by_an_update_stop_the_run_unsaved(twin, tmp_path, monkeypatch):
    data = make_class_folder(tmp_path / "images")
    settings = [
        *overrides(TARFLOW_TINY, data=str(data), steps=3, save_every=1),
        f"train.out_dir={tmp_path / 'run'}",
    ]
    if twin == "mlx":
        import mlx.optimizers as optim

        from starflow_mlx.training import train

        real = optim.AdamW.update

        def poisoned(self, model, gradients):
            real(self, model, gradients)
            if int(self.step.item()) == 2:
                block = model.blocks[0]
                block.proj_in.weight = block.proj_in.weight * float("inf")

        monkeypatch.setattr(optim.AdamW, "update", poisoned)
    else:
        from starflow_torch.training import train

        real = torch.optim.AdamW.step

        def poisoned(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            if self.state[self.param_groups[0]["params"][0]]["step"] == 2:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return out

        monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(
        ValueError, match="update of step 2 .* made some weights NaN or infinite; they were not saved"
    ):
        train(load_run_config(None, settings))
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == [LATEST_NAME, "step_00000001"]  # the bad weights of step 2 never reached disk


def test_a_step_without_a_readable_image_makes_no_update(tmp_path, monkeypatch, capsys):
    from starflow_torch.training import train
    from starflow_torch.training.inputs import InputBuilder

    data = make_class_folder(tmp_path / "images")
    real = InputBuilder.__call__

    def unreadable(self, batch, micro_step):
        inputs = real(self, batch, micro_step)
        inputs.weight = 0.0 if micro_step == 1 else inputs.weight  # as if all of step 2 failed to decode
        return inputs

    monkeypatch.setattr(InputBuilder, "__call__", unreadable)
    out = tmp_path / "run"
    result = train(
        load_run_config(None, [*overrides(TARFLOW_TINY, data=str(data), steps=3), f"train.out_dir={out}"])
    )
    assert result.progress.skipped_steps == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in log] == [0, 1, 1]


def test_skipped_images_are_named_on_the_console(tmp_path, capsys):
    from starflow_torch.training import train

    data = make_class_folder(tmp_path / "images", per_class=4)
    (data / "class_0" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    result = train(
        load_run_config(
            None, [*overrides(TARFLOW_TINY, data=str(data), steps=3, batch_size=9), f"train.out_dir={out}"]
        )
    )
    assert result.progress.corrupt_images == 3  # every step reads all nine files
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2  # steps 1 and 2 (1 and 2 skipped so far), then not until 4
    assert all("class_0/broken.png cannot be decoded" in line for line in warnings)


def test_a_read_only_out_dir_is_named_with_the_fix(tmp_path, monkeypatch):
    """As root a chmod does not stop writes, so the refusal of the file system is simulated."""
    from starflow_core.training.run_folder import prepare_out_dir

    def read_only(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(
        PermissionError, match=r"cannot write to train.out_dir=.*\(Permission denied\); choose"
    ):
        prepare_out_dir(tmp_path / "run")


def test_a_failed_weights_write_is_an_oserror_in_both_twins(tmp_path, monkeypatch):
    """safetensors and MLX report a full disk in their own exception types; our savers say OSError,
    which the commands report in one line (a traceback before)."""
    import safetensors
    import safetensors.torch

    def torch_full(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.torch, "save_file", torch_full)
    with pytest.raises(OSError, match="File too large"):
        starflow_torch.StarFlow(TINY_LABEL_FLOW).save_pretrained(tmp_path / "torch")

    def mlx_full(*args, **kwargs):
        raise RuntimeError("[write] Unable to write 4365 bytes to file.")

    monkeypatch.setattr(mx, "save_safetensors", mlx_full)
    with pytest.raises(OSError, match="Unable to write"):
        starflow_mlx.StarFlow(TINY_LABEL_FLOW).save_pretrained(tmp_path / "mlx")
    assert not [p for p in (tmp_path / "mlx").iterdir() if p.name.startswith(".")]  # no half-written file
