"""The training command line shared by `python -m starflow_mlx.train` and `python -m starflow_torch.train`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


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
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.data, "data"), (args.out_dir, "out_dir"), (args.steps, "steps")):
        if flag is not None:
            overrides.append(f"train.{key}={flag}")
    return args, overrides
