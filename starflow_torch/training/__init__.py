"""Training the torch twin: `python -m starflow_torch.train --config run.yaml`."""

from starflow_core.training.config import RunConfig, TrainConfig, load_run_config

from .trainer import TrainResult, train

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "load_run_config", "train"]
