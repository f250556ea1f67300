"""The adversarial cases: bad input and faults on every command line, in both twins.

Each `Case` is one bad command: it must exit with `code` (2: a user error, one line on stderr
containing `expect`, never a traceback) and leave the workspace exactly as it was (nothing
lost, nothing half-written left behind). The scenarios (fault_scenarios.py) are faults that
need a sequence of steps (a run already in the folder, a second trainer, a signal, a full disk).
tests/test_faults.py runs all of them; run this module to print the tally:

    python -m tests.helpers.fault_cases          # every case and scenario, both twins, subprocesses
    python -m tests.helpers.fault_cases --mlx-cases WS   # the MLX cases in one process, as JSON
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from .fault_files import FILE_CASES, damaged_checkpoint_files, edit_stepwise, first_checkpoint_fails
from .fault_scenarios import damaged_checkpoint, scenarios, second_trainer, used_folder
from .fault_workspace import Outcome, changes, judge, make_workspace, run_cli, snapshot

OUT = "{ws}/out/x.png"  # a generate output in a folder that does not exist yet (must not be left)
IMAGE, BROKEN_IMAGE = "{ws}/images/class_0/0.png", "{ws}/broken_images/class_0/0.png"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    command: str  # convert | generate | train | encode_dataset | score
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
    # ----- editing and scoring: refused before any weights load, nothing written
    _gen("generate-mask-without-image", "give --image PATH", "--mask", IMAGE),
    _gen("generate-strength-above-one", "strength must be in [0, 1]", "--image", IMAGE, "--strength", "1.5"),
    _gen("generate-unreadable-image", "not a readable image", "--image", BROKEN_IMAGE),
    _gen("generate-missing-mask", "does not exist", "--image", IMAGE, "--mask", "{ws}/no_mask.png"),
    _gen("generate-mask-box-outside", "must satisfy", "--image", IMAGE, "--mask-box", "0,0,99,4"),
    Case(
        "score-unreadable-image", "score", (IMAGE, BROKEN_IMAGE, "--model", "{ws}/labels"), "not a readable"
    ),
    Case(
        "score-label-not-in-model",
        "score",
        (IMAGE, "--model", "{ws}/labels", "--label", "zebra"),
        "not a class",
    ),
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
# damaged and hand-edited structured files, special files (fault_files.py)
CASES += [Case(*case) for case in FILE_CASES]


def cuda_cases() -> list[Case]:
    """Cases that hold only on a machine without CUDA (the README's --device cuda example)."""
    import torch

    if torch.cuda.is_available():
        return []
    return [
        _gen("generate-device-cuda-without-cuda", "use --device cpu", "--device", "cuda", twins=("torch",)),
        _gen("generate-float16-on-cpu", "does not run on CPU", "--dtype", "float16", twins=("torch",)),
    ]


def run_case(case: Case, twin: str, ws: Path, in_process: bool = False) -> Outcome:
    before = snapshot(ws)
    result = run_cli(twin, case.command, case.argv(ws), ws, in_process)
    return judge(case.name, twin, result, case.code, case.expect, changes(before, snapshot(ws)))


def mlx_cases_here(ws: Path) -> dict[str, dict]:
    """Every case of the MLX twin and its scenarios that need no signals, the commands called
    in this process (a process of its own: they switch BLAS); outcome fields by name."""
    outcomes = [run_case(case, "mlx", ws, in_process=True) for case in CASES if "mlx" in case.twins]
    for scenario in (
        used_folder,
        damaged_checkpoint,
        second_trainer,
        damaged_checkpoint_files,
        first_checkpoint_fails,
        edit_stepwise,
    ):
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
