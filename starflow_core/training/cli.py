"""The training command line shared by `python -m starflow_mlx.train` and `python -m starflow_torch.train`."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from starflow_core.command_line import (
    EXIT_INTERRUPTED,
    command_name,
    command_parser,
    positive_int,
    run_command,
)
from starflow_core.training.files import RUN_NAME, checkpoint_of


def parse_train_arguments(module: str, description: str, argv: Sequence[str] | None = None) -> tuple:
    """The trainers' shared command line: (arguments, the `section.key=value` overrides)."""
    parser = command_parser(module, description)
    parser.add_argument("--config", help="run file (JSON or YAML) with model and train sections")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set train.lr=1e-4 --set model.preset=tiny (repeatable)",
    )
    parser.add_argument("--data", help="shortcut for --set train.data=...")
    parser.add_argument(
        "-o",
        "--output",
        "--out-dir",
        dest="out_dir",
        metavar="FOLDER",
        help="run folder; shortcut for --set train.out_dir=...",
    )
    parser.add_argument("--steps", type=int, help="shortcut for --set train.steps=...")
    parser.add_argument("--resume", help="checkpoint folder, or a run folder (continues from its latest)")
    parser.add_argument(
        "--stop-at-step", type=positive_int, help="save and stop after this step (for time-boxed jobs)"
    )
    parser.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume on a data set other than the checkpoint's (refused by default: not an exact resume)",
    )
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.data, "data"), (args.out_dir, "out_dir"), (args.steps, "steps")):
        if flag is not None:
            overrides.append(f"train.{key}={flag}")
    return args, overrides


def resumed_run_settings(resume: Path, config: str | None, overrides: list[str]) -> tuple:
    """`--resume RUN_FOLDER` continues that run in that folder: without --config from the
    configuration stored with its checkpoint (run.json), and with --config too still in
    RUN_FOLDER (not the file's out_dir) unless -o / --set train.out_dir says otherwise."""
    checkpoint = checkpoint_of(resume)
    if checkpoint is None or not (checkpoint / RUN_NAME).is_file():
        if config is None:
            raise FileNotFoundError(
                f"--resume {resume}: no training checkpoint there (expected a run folder with "
                "checkpoints/latest, or a checkpoint folder with run.json)"
            )
        return config, overrides  # the trainer names what is missing
    settings = list(overrides)
    if config is None:
        config = str(checkpoint / RUN_NAME)
        stored = json.loads((checkpoint / RUN_NAME).read_text()).get("train") or {}
        if "ema_warmup" not in stored:  # written before the EMA had a warm-up: continue it without
            settings.insert(0, "train.ema_warmup=false")
    run_folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    if not any(item.replace(" ", "").startswith("train.out_dir=") for item in overrides):
        settings.append(f"train.out_dir={json.dumps(str(run_folder))}")
    return config, settings


def sampling_hint(module: str, run_folder: Path) -> str:
    """The trainer's last line: how to generate from the run just trained (its latest checkpoint,
    EMA weights when the run kept an EMA)."""
    generate = module.rsplit(".", 1)[0] + ".generate"
    return f"sample from it: python -m {generate} --model {shlex.quote(str(run_folder))} PROMPT --seed 0"


def train_command(module: str, description: str, argv: Sequence[str] | None, load_run_config, train) -> int:
    """Both trainers' `main`: parse, train, report; user errors exit 2 with one line (no traceback),
    a stop signal (Ctrl-C, SIGTERM) 130 once the checkpoint of the last finished step is saved."""
    args, overrides = parse_train_arguments(module, description, argv)
    prog = command_name(module)

    def body() -> int:
        config, settings = args.config, list(overrides)
        if args.resume is not None:
            config, settings = resumed_run_settings(Path(args.resume), config, settings)
        run = load_run_config(config, settings)
        result = train(
            run, resume=args.resume, stop_at_step=args.stop_at_step, allow_data_change=args.allow_data_change
        )
        state = "stopped" if result.interrupted else "finished"
        if result.checkpoint is not None:
            print(f"{state} at step {result.progress.step}; checkpoint {result.checkpoint}")
        if result.signalled:  # saved, but not the run asked for: a shell or scheduler must see that
            where = f" --resume {result.checkpoint}" if result.checkpoint is not None else " --resume"
            print(
                f"{prog}: interrupted; step {result.progress.step} is saved, continue with{where}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if result.checkpoint is not None:
            print(sampling_hint(module, Path(result.checkpoint).parent.parent))
        return 0

    return run_command(prog, body)
