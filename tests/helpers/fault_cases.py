"""The adversarial cases of issue 12: bad input and faults on every command line, in both twins.

Each `Case` is one bad command: it must exit with `code` (2: a user error, one line on stderr
containing `expect`, never a traceback) and leave the workspace exactly as it was (nothing
lost, nothing half-written left behind). The scenarios further down are faults that need
a sequence of steps (a run already in the folder, a second trainer, a signal, a full disk).
tests/test_faults.py runs all of them; run this module to print the tally:

    python -m tests.helpers.fault_cases          # every case and scenario, both twins, subprocesses
    python -m tests.helpers.fault_cases --mlx-cases WS   # the MLX cases in one process, as JSON
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .fault_workspace import Result, changes, environment, make_workspace, run_cli, snapshot

OUT = "{ws}/out/x.png"  # a generate output in a folder that does not exist yet (must not be left)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    command: str  # convert | generate | train | encode_dataset
    args: tuple[str, ...]  # "{ws}" stands for the workspace folder
    expect: str
    twins: tuple[str, ...] = ("mlx", "torch")
    code: int = 2

    def argv(self, ws: Path) -> list[str]:
        return [arg.replace("{ws}", str(ws)) for arg in self.args]


def _gen(name: str, expect: str, *args: str, model: str = "labels", twins=("mlx", "torch")) -> Case:
    return Case(
        name,
        "generate",
        ("cat", "--model", f"{{ws}}/{model}", "--output", OUT, "--quiet", *args),
        expect,
        twins,
    )


def _train(name: str, expect: str, *args: str) -> Case:
    return Case(name, "train", ("--config", "{ws}/run.json", "--out-dir", "{ws}/run_new", *args), expect)


OFFICIAL = ("{ws}/official.pth", "--config", "{ws}/official_config.json")
ENCODE = ("--images", "{ws}/images", "--vae", "{ws}/parts/vae", "--conditioning", "label")
CASES = [
    # ----- convert: validate first, never replace an input, never delete before done
    Case(
        "convert-output-is-the-source",
        "convert",
        ("flow", "{ws}/flow", "-o", "{ws}/flow", "--overwrite", "--dtype", "float16"),
        "is the input",
    ),
    Case(
        "convert-output-holds-the-input",
        "convert",
        (
            "flow",
            "{ws}/in_dir/official.pth",
            "--config",
            "{ws}/official_config.json",
            "-o",
            "{ws}/in_dir",
            "--overwrite",
        ),
        "contains the input",
    ),
    Case(
        "convert-truncated-input-over-existing-output",
        "convert",
        ("flow", "{ws}/cut.pth", "--config", "{ws}/official_config.json", "-o", "{ws}/flow", "--overwrite"),
        "truncated or corrupt",
    ),
    Case(
        "convert-refused-pickle",
        "convert",
        ("flow", "{ws}/evil.pth", "--config", "{ws}/official_config.json", "-o", "{ws}/new"),
        "carries code",
    ),
    Case(
        "convert-quantize-a-quantized-folder",
        "convert",
        ("flow", "{ws}/flow_q", "-o", "{ws}/new", "--quantize", "8"),
        "already quantized (4 bits, group size 64); quantize the full-precision folder",
    ),
    Case(
        "convert-config-value-of-wrong-type",
        "convert",
        ("flow", "{ws}/official.pth", "--config", "{ws}/config_str.json", "-o", "{ws}/new"),
        "FlowConfig.channels='128': must be an integer",
    ),
    Case(
        "convert-pipeline-output-holds-the-model",
        "convert",
        ("pipeline", "--model", "{ws}/labels", "-o", "{ws}", "--overwrite"),
        "contains the input",
    ),
    Case(
        "convert-existing-output-without-overwrite",
        "convert",
        ("flow", *OFFICIAL, "-o", "{ws}/flow"),
        "pass --overwrite",
    ),
    # ----- encode: the same rules for its --out folder
    Case(
        "encode-output-is-the-images",
        "encode_dataset",
        (*ENCODE, "--out", "{ws}/images", "--overwrite"),
        "is the input",
    ),
    Case("encode-existing-output", "encode_dataset", (*ENCODE, "--out", "{ws}/flow"), "pass --overwrite"),
    Case(
        "encode-missing-vae",
        "encode_dataset",
        ("--images", "{ws}/images", "--vae", "{ws}/nowhere", "--conditioning", "label", "--out", "{ws}/new"),
        "VAE config not found",
    ),
    Case(
        "encode-every-image-corrupt",
        "encode_dataset",
        (
            "--images",
            "{ws}/broken_images",
            "--vae",
            "{ws}/parts/vae",
            "--conditioning",
            "label",
            "--out",
            "{ws}/new",
        ),
        "no image of",
    ),
    # ----- generate: checked before any weights load
    _gen("generate-aspect-ratio-inf", "finite numbers > 0", "--aspect-ratio", "inf:1"),
    _gen("generate-aspect-ratio-nan", "finite numbers > 0", "--aspect-ratio", "nan:1"),
    _gen("generate-height-0", "--height must be a positive number", "--height", "0"),
    _gen("generate-height-100000", "--no-size-limit", "--height", "100000"),
    _gen("generate-aspect-ratio-1000000-to-1", "--no-size-limit", "--aspect-ratio", "1000000:1"),
    _gen("generate-20000-images", "--max-images 20000", "--n-images", "20000"),
    _gen("generate-negative-seed", "seeds must be >= 0", "--seed", "-5"),
    _gen(
        "generate-jacobi-tol-nan",
        "GenerationSettings.tol=nan: must be a finite number",
        "--jacobi-tol",
        "nan",
    ),
    _gen("generate-label-out-of-range", "not a class of this label-conditioned model", "--prompt", "12"),
    _gen("generate-sampling-value-of-wrong-type", "GenerationSettings.block_size='4'", model="bad_sampling"),
    _gen("generate-config-value-of-wrong-type", "FlowConfig.channels='128'", model="bad_config"),
    _gen("generate-refused-pickle-decoder", "refused", "--decoder", "{ws}/evil.pth", model="latent"),
    _gen("generate-device-bogus", "unknown --device 'bogus'", "--device", "bogus", twins=("torch",)),
    # ----- train: settings checked before the run folder is touched
    _train(
        "train-betas-not-a-pair",
        "TrainConfig.betas=0.9: must be a list of 2 numbers",
        "--set",
        "train.betas=0.9",
    ),
    _train(
        "train-steps-not-a-number", "TrainConfig.steps='abc': must be an integer", "--set", "train.steps=abc"
    ),
    _train("train-negative-seed", "TrainConfig.seed=-5: must be >= 0", "--set", "train.seed=-5"),
    _train("train-infinite-lr", "TrainConfig.lr=inf: must be a finite number", "--set", "train.lr=.inf"),
    _train(
        "train-nan-grad-clip",
        "TrainConfig.grad_clip=nan: must be a finite number",
        "--set",
        "train.grad_clip=.nan",
    ),
    _train("train-out-dir-is-a-file", "is a file, not a folder", "--out-dir", "{ws}/a_file"),
    _train("train-out-dir-inside-a-file", "cannot write to train.out_dir", "--out-dir", "{ws}/a_file/run"),
    _train("train-every-image-corrupt", "could not be decoded", "--set", "train.data={ws}/broken_images"),
    _train("train-resume-from-nowhere", "no training checkpoint", "--resume", "{ws}/nowhere"),
]


def cuda_cases() -> list[Case]:
    """Cases that hold only on a machine without CUDA (the README's --device cuda example)."""
    import torch

    if torch.cuda.is_available():
        return []
    return [
        _gen("generate-device-cuda-without-cuda", "use --device cpu", "--device", "cuda", twins=("torch",)),
        _gen("generate-float16-on-cpu", "does not run on CPU", "--dtype", "float16", twins=("torch",)),
    ]


# ----- outcomes -----------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    name: str
    twin: str
    problems: list[str]  # empty: the case behaved
    traceback: bool = False
    lost: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(name: str, twin: str, result: Result, code: int, expect: str | None, lost: list[str]) -> Outcome:
    """Exit code, the one-line message, no traceback, nothing lost or left behind."""
    problems = []
    if result.code != code:
        problems.append(f"exit {result.code}, expected {code}")
    if code != 0 and (len(result.messages) != 1 or (expect and expect not in result.messages[-1])):
        problems.append(f"stderr {result.messages[-3:]!r}, expected one line with {expect!r}")
    if result.traceback:
        problems.append("traceback")
    problems += lost
    return Outcome(name, twin, problems, result.traceback, [c for c in lost if not c.startswith("left")])


def run_case(case: Case, twin: str, ws: Path, in_process: bool = False) -> Outcome:
    before = snapshot(ws)
    result = run_cli(twin, case.command, case.argv(ws), ws, in_process)
    return judge(case.name, twin, result, case.code, case.expect, changes(before, snapshot(ws)))


# ----- scenarios: faults that take more than one command -------------------------------------
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
            "import fcntl, os, sys, time\nf = open(sys.argv[1], 'a+')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\nf.write(str(os.getpid())); f.flush(); print('held', flush=True)\n"
            "time.sleep(600)",
            str(out / ".lock"),
        ],
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
        timeout=300,
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
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps, with workers started for a new epoch
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    result = Result(process.returncode, stdout, stderr)
    saved = (
        []
        if "stopped at step" in stdout and (out / "checkpoints" / "latest").is_file()
        else ["no checkpoint"]
    )
    if "DataLoader worker died" in stderr:  # saved anyway, but the workers should have ignored the signal
        saved.append("a DataLoader worker died of the signal")
    return [judge("train-sigterm-to-process-group", "torch", result, 0, None, saved)]


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
    )
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(out.glob("*.png"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    result = Result(process.returncode, stdout, stderr)
    partial = [f"left {p.name}" for p in out.iterdir() if not p.name.endswith(".png")] if out.is_dir() else []
    return [judge("generate-ctrl-c", twin, result, 130, "complete image(s) were written", partial)]


def scenarios(ws: Path, twin: str) -> list[Outcome]:
    outcomes = used_folder(ws, twin) + damaged_checkpoint(ws, twin) + second_trainer(ws, twin)
    outcomes += disk_full(ws, twin) + interrupted_generate(ws, twin)
    if twin == "torch":
        outcomes += signal_to_process_group(ws)
    return outcomes


def mlx_cases_here(ws: Path) -> dict[str, dict]:
    """Every case of the MLX twin and its scenarios that need no signals, the commands called
    in this process (a process of its own: they switch BLAS); outcome fields by name."""
    outcomes = [run_case(case, "mlx", ws, in_process=True) for case in CASES if "mlx" in case.twins]
    for scenario in (used_folder, damaged_checkpoint, second_trainer):
        outcomes += scenario(ws, "mlx", in_process=True)
    return {outcome.name: dataclasses.asdict(outcome) for outcome in outcomes}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--mlx-cases"]:
        print(json.dumps(mlx_cases_here(Path(argv[1]))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        outcomes = []
        for case in CASES + cuda_cases():
            for twin in case.twins:
                outcomes.append(run_case(case, twin, ws))
                print(
                    f"{'ok  ' if outcomes[-1].ok else 'FAIL'} {twin:5s} {case.name} {outcomes[-1].problems or ''}"
                )
        for twin in ("mlx", "torch"):
            for outcome in scenarios(ws, twin):
                outcomes.append(outcome)
                print(f"{'ok  ' if outcome.ok else 'FAIL'} {twin:5s} {outcome.name} {outcome.problems or ''}")
    print(
        json.dumps(
            {
                "cases tried": len(outcomes),
                "behaved (clean error, or clean recovery)": sum(o.ok for o in outcomes),
                "tracebacks": sum(o.traceback for o in outcomes),
                "data lost": sum(bool(o.lost) for o in outcomes),
            }
        )
    )
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
