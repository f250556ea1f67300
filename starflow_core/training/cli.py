"""The training command line shared by `python -m starflow_mlx.train` and `python -m starflow_torch.train`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from starflow_core.command_line import run_command


def parse_train_arguments(prog: str, description: str, argv: Sequence[str] | None = None) -> tuple:
    """The trainers' shared command line: (arguments, the `section.key=value` overrides)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
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
    parser.add_argument("--out-dir", help="shortcut for --set train.out_dir=...")
    parser.add_argument("--steps", type=int, help="shortcut for --set train.steps=...")
    parser.add_argument("--resume", help="checkpoint folder, or a run folder (continues from its latest)")
    parser.add_argument(
        "--stop-at-step", type=int, help="save and stop after this step (for time-boxed jobs)"
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


def train_command(prog: str, description: str, argv: Sequence[str] | None, load_run_config, train) -> int:
    """Both trainers' `main`: parse, train, report; user errors exit 2 with one line (no traceback)."""
    args, overrides = parse_train_arguments(prog, description, argv)

    def body() -> int:
        run = load_run_config(args.config, overrides)
        result = train(
            run, resume=args.resume, stop_at_step=args.stop_at_step, allow_data_change=args.allow_data_change
        )
        state = "stopped" if result.interrupted else "finished"
        if result.checkpoint is not None:
            print(f"{state} at step {result.progress.step}; checkpoint {result.checkpoint}")
        return 0

    return run_command(prog, body)
