"""Train a STARFlow / TARFlow model with the torch twin.

    python -m starflow_torch.train --config run.yaml [--set train.lr=1e-4 ...]
    torchrun --nproc_per_node 8 -m starflow_torch.train --config run.yaml        # DDP
    torchrun --nproc_per_node 8 -m starflow_torch.train --config run.yaml --set train.parallel=fsdp
    python -m starflow_torch.train --config run.yaml --resume runs/my_run      # continue exactly

The run file has a `model` section (a preset name or FlowConfig fields) and a `train`
section (TrainConfig fields); see starflow_torch/training/config.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .training import load_run_config, train


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="starflow-train", description=__doc__.splitlines()[0])
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.data, "data"), (args.out_dir, "out_dir"), (args.steps, "steps")):
        if flag is not None:
            overrides.append(f"train.{key}={flag}")
    run = load_run_config(args.config, overrides)
    result = train(run, resume=args.resume, stop_at_step=args.stop_at_step)
    state = "stopped" if result.interrupted else "finished"
    if result.checkpoint is not None:
        print(f"{state} at step {result.progress.step}; checkpoint {result.checkpoint}")


if __name__ == "__main__":
    main()
