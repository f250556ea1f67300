"""The faults that take more than one command: a run already in the folder, a second
trainer, a damaged checkpoint, a failed checkpoint write, a signal to the process group, Ctrl-C.
Each returns the Outcomes of its steps (fault_workspace.judge); fault_cases.py runs them all.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .fault_workspace import Outcome, Result, changes, environment, judge, run_cli, snapshot
from .waiting import HANG_GUARD_S, logged_steps, wait_for


def train_args(ws: Path, out: str, *extra: str) -> list[str]:
    return ["--config", str(ws / "run.json"), "--out-dir", str(ws / out), *extra]


def used_folder(ws: Path, twin: str, in_process: bool = False) -> list[Outcome]:
    """A fresh run where a run already is; then a resume on other data; then a resume."""
    first = run_cli(twin, "train", train_args(ws, f"used_{twin}"), ws, in_process)
    outcomes = [judge("train-first-run", twin, first, 0, None, [])]
    before = snapshot(ws)
    again = run_cli(twin, "train", train_args(ws, f"used_{twin}"), ws, in_process)
    outcomes.append(
        judge(
            "train-fresh-run-in-used-folder",
            twin,
            again,
            2,
            "already holds a run",
            changes(before, snapshot(ws)),
        )
    )
    other = ws / f"images_other_{twin}"
    if not other.exists():
        shutil.copytree(ws / "images", other)
        (other / "class_0" / "0.png").unlink()
    before = snapshot(ws)
    resume = ["--resume", str(ws / f"used_{twin}"), "--steps", "3"]
    changed = run_cli(
        twin, "train", train_args(ws, f"used_{twin}", *resume, "--set", "train.batch_size=8"), ws, in_process
    )
    outcomes.append(
        judge(
            "train-resume-with-other-settings",
            twin,
            changed,
            2,
            "differs from the saved run: train.batch_size: checkpoint 4, now 8; resume with the run's own config",
            changes(before, snapshot(ws)),
        )
    )
    moved = train_args(
        ws,
        f"used_{twin}",
        "--resume",
        str(ws / f"used_{twin}"),
        "--steps",
        "3",
        "--set",
        f"train.data={other}",
    )
    refused = run_cli(twin, "train", moved, ws, in_process)
    outcomes.append(
        judge(
            "train-resume-on-other-data",
            twin,
            refused,
            2,
            "--allow-data-change",
            changes(before, snapshot(ws)),
        )
    )
    for stale in (
        f"used_{twin}/checkpoints/.step_00000009.tmp-999999",
        f"used_{twin}/checkpoints/.latest.x1y2.tmp",
    ):
        (ws / stale).mkdir() if stale.endswith("999") else (ws / stale).write_text("half")
    resumed = run_cli(
        twin,
        "train",
        [*train_args(ws, f"used_{twin}", "--resume", str(ws / f"used_{twin}"), "--steps", "3")],
        ws,
        in_process,
    )
    left = [f"left {p.name}" for p in (ws / f"used_{twin}" / "checkpoints").glob(".*")]
    outcomes.append(judge("train-resume-removes-debris", twin, resumed, 0, None, left))
    return outcomes


def damaged_checkpoint(ws: Path, twin: str, in_process: bool = False) -> list[Outcome]:
    """A truncated training state (resume offers the previous checkpoint), then a damaged log line."""
    out = ws / f"damaged_{twin}"
    run_cli(twin, "train", train_args(ws, out.name, "--set", "train.save_every=1"), ws, in_process)
    state = next((out / "checkpoints" / "step_00000002").glob("training_state.*"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = snapshot(ws)
    result = run_cli(
        twin, "train", train_args(ws, out.name, "--resume", str(out), "--steps", "3"), ws, in_process
    )
    outcomes = [
        judge(
            "train-truncated-state",
            twin,
            result,
            2,
            "--resume " + str(out / "checkpoints" / "step_00000001"),
            changes(before, snapshot(ws)),
        )
    ]
    log = out / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "lo')
    resumed = run_cli(
        twin,
        "train",
        train_args(ws, out.name, "--resume", str(out / "checkpoints" / "step_00000001"), "--steps", "3"),
        ws,
        in_process,
    )
    warned = (
        [] if f"{log}, line 3 is damaged" in resumed.stderr else ["no warning naming the damaged log line"]
    )
    outcomes.append(judge("train-damaged-log-line", twin, resumed, 0, None, warned))
    return outcomes


def second_trainer(ws: Path, twin: str, in_process: bool = False) -> list[Outcome]:
    """A live trainer holds the folder: refused, naming its pid; once it died (kill -9), not blocked."""
    out = ws / f"locked_{twin}"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\nf = open(sys.argv[1], 'a+')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\nf.write(str(os.getpid())); f.flush(); print('held', flush=True)\n"
            "sys.stdin.read()",  # holds the lock until killed, or until this test's process is gone
            str(out / ".lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    holder.stdout.readline()
    busy = run_cli(twin, "train", train_args(ws, out.name), ws, in_process)
    outcomes = [
        judge("train-second-trainer", twin, busy, 2, f"in use by another trainer (pid {holder.pid})", [])
    ]
    holder.kill()
    holder.wait()
    free = run_cli(twin, "train", train_args(ws, out.name), ws, in_process)
    outcomes.append(judge("train-after-holder-killed", twin, free, 0, None, []))
    return outcomes


def disk_full(ws: Path, twin: str) -> list[Outcome]:
    """A checkpoint write fails (file size limit: EFBIG, as a full disk gives ENOSPC); the previous
    checkpoint and `latest` survive and the message says so."""
    out = ws / f"full_{twin}"
    run_cli(twin, "train", train_args(ws, out.name, "--steps", "1"), ws)
    kept = snapshot(out / "checkpoints")

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    module = {"mlx": "starflow_mlx.train", "torch": "starflow_torch.train"}[twin]
    completed = subprocess.run(
        [sys.executable, "-m", module, *train_args(ws, out.name, "--resume", str(out), "--steps", "2")],
        cwd=ws,
        env=environment(ws),
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        preexec_fn=limit_files,
    )
    result = Result(completed.returncode, completed.stdout, completed.stderr)
    return [
        judge(
            "train-checkpoint-write-fails",
            twin,
            result,
            2,
            "step_00000001 is intact",
            changes(kept, snapshot(out / "checkpoints")),
        )
    ]


def signal_to_process_group(ws: Path) -> list[Outcome]:
    """SIGTERM to the whole process group of a torch trainer with DataLoader workers: it saves."""
    out = ws / "group_torch"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "starflow_torch.train",
            *train_args(
                ws,
                out.name,
                "--steps",
                "100000",
                "--set",
                "train.num_workers=2",
                "--set",
                "train.batch_size=1",
            ),
        ],
        cwd=ws,
        env=environment(ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # 10 steps of batch 1 over 8 images: the workers of a second epoch have started
    wait_for(lambda: logged_steps(out / "log.jsonl") >= 10, process, "10 logged steps")
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    result = Result(process.returncode, stdout, stderr)
    saved = (
        []
        if "stopped at step" in stdout and (out / "checkpoints" / "latest").is_file()
        else ["no checkpoint"]
    )
    if "DataLoader worker died" in stderr:  # saved anyway, but the workers should have ignored the signal
        saved.append("a DataLoader worker died of the signal")
    return [judge("train-sigterm-to-process-group", "torch", result, 130, "continue with --resume", saved)]


def interrupted_generate(ws: Path, twin: str) -> list[Outcome]:
    """Ctrl-C while images are being written: exit 130, one line, only complete images."""
    out = ws / f"interrupted_{twin}"
    module = {"mlx": "starflow_mlx.generate", "torch": "starflow_torch.generate"}[twin]
    args = [
        "cat",
        "--model",
        str(ws / "labels"),
        "--n-images",
        "5000",
        "--batch-size",
        "1",
        "--output",
        str(out),
        "--quiet",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ws,
        env=environment(ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C's default action even when the suite runs in a background job (which ignores SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # images are written whole under a temporary name, then renamed: a .png is a complete one
    wait_for(lambda: out.is_dir() and any(out.glob("*.png")), process, "the first image")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    result = Result(process.returncode, stdout, stderr)
    partial = [f"left {p.name}" for p in out.iterdir() if not p.name.endswith(".png")] if out.is_dir() else []
    return [judge("generate-ctrl-c", twin, result, 130, "complete image(s) were written", partial)]


def scenarios(ws: Path, twin: str) -> list[Outcome]:
    from .fault_files import damaged_checkpoint_files, edit_stepwise, first_checkpoint_fails

    outcomes = used_folder(ws, twin) + damaged_checkpoint(ws, twin) + second_trainer(ws, twin)
    outcomes += (
        damaged_checkpoint_files(ws, twin) + first_checkpoint_fails(ws, twin) + edit_stepwise(ws, twin)
    )
    outcomes += disk_full(ws, twin) + interrupted_generate(ws, twin)
    if twin == "torch":
        outcomes += signal_to_process_group(ws)
    return outcomes
