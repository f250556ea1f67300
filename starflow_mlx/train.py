"""Train or fine-tune a STARFlow / TARFlow model with MLX on one device (Apple GPU, or CPU).

    python -m starflow_mlx.train --config run.yaml [--set train.lr=1e-4 ...]
    python -m starflow_mlx.train --set model.preset=digits --data digits_png/ -o runs/digits
    python -m starflow_mlx.train --config run.yaml --resume runs/my_run      # continue exactly
    python -m starflow_mlx.train --config run.yaml --set train.init_weights=ckpt/  # fine-tune

The same run file as the torch twin (`python -m starflow_torch.train`): a `model`
section (a preset name or FlowConfig fields) and a `train` section (TrainConfig fields,
see starflow_core/training/config.py). Data: an image folder (class subfolders, or
metadata.jsonl captions with train.text_encoder) or encoded latent shards. Checkpoint
weights load in either twin.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import sys
from collections.abc import Sequence

from starflow_core.training.cli import train_command
from starflow_core.training.config import load_run_config


def train(*args, **kwargs):
    """The trainer, imported once the arguments are read (MLX takes seconds to load)."""
    from .training import train as run_training

    return run_training(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    return train_command("starflow_mlx.train", __doc__.splitlines()[0], argv, load_run_config, train)


if __name__ == "__main__":
    sys.exit(main())
