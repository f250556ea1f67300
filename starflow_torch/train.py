"""Train a STARFlow / TARFlow model with the torch twin.

    python -m starflow_torch.train --config run.yaml [--set train.lr=1e-4 ...]
    torchrun --nproc_per_node 8 -m starflow_torch.train --config run.yaml        # DDP
    torchrun --nproc_per_node 8 -m starflow_torch.train --config run.yaml --set train.parallel=fsdp
    python -m starflow_torch.train --config run.yaml --resume runs/my_run      # continue exactly

The run file has a `model` section (a preset name or FlowConfig fields) and a `train`
section (TrainConfig fields); see starflow_torch/training/config.py.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from starflow_core.training.cli import train_command
from starflow_core.training.config import load_run_config


def train(*args, **kwargs):
    """The trainer, imported once the arguments are read (torch takes seconds to load)."""
    from .training import train as run_training

    return run_training(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    return train_command("starflow_torch.train", __doc__.splitlines()[0], argv, load_run_config, train)


if __name__ == "__main__":
    sys.exit(main())
