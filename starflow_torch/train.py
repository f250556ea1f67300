"""Train a STARFlow / TARFlow model with the torch twin.

    python -m starflow_torch.train --config run.yaml [--set train.lr=1e-4 ...]
    torchrun --nproc_per_node 8 -m starflow_torch.train --config run.yaml        # DDP
    torchrun --nproc_per_node 8 -m starflow_torch.train --config run.yaml --set train.parallel=fsdp
    python -m starflow_torch.train --config run.yaml --resume runs/my_run      # continue exactly

The run file has a `model` section (a preset name or FlowConfig fields) and a `train`
section (TrainConfig fields); see starflow_torch/training/config.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from starflow_core.training.cli import parse_train_arguments

from .training import load_run_config, train


def main(argv: Sequence[str] | None = None) -> None:
    args, overrides = parse_train_arguments("starflow-train", __doc__.splitlines()[0], argv)
    try:
        run = load_run_config(args.config, overrides)
        result = train(run, resume=args.resume, stop_at_step=args.stop_at_step)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"starflow-train: {err}") from None
    state = "stopped" if result.interrupted else "finished"
    if result.checkpoint is not None:
        print(f"{state} at step {result.progress.step}; checkpoint {result.checkpoint}")


if __name__ == "__main__":
    main()
