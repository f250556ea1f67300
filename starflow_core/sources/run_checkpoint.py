"""A training run as a model to generate from (framework-free): `--model RUN_FOLDER`.

    runs/x                          the run folder: its latest checkpoint
    runs/x/checkpoints              the same
    runs/x/checkpoints/latest       the file naming the latest checkpoint: the same
    runs/x/checkpoints/step_00000150     that checkpoint

The EMA weights (`ema/`) are used when the run kept an EMA, else the model's; the class names
are the run's class subfolders (data.json), the VAE and text encoder the run's (run.json).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from starflow_core.config import FlowConfig
from starflow_core.generation.settings import GenerationSettings
from starflow_core.sources.pipeline_folder import FLOW_CONFIG, FLOW_WEIGHTS, PipelineParts
from starflow_core.training.files import DATA_NAME, RUN_NAME, checkpoint_of

EMA_FOLDER = "ema"


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err}); the checkpoint is damaged") from None
    return value if isinstance(value, dict) else {}


def _folder(value: Any) -> Path | None:
    return Path(value).expanduser() if value else None


def run_parts(path: str | Path) -> PipelineParts | None:
    """The parts of the checkpoint `path` names, or None when `path` is no run or checkpoint."""
    path = Path(path).expanduser()
    checkpoint = checkpoint_of(path)
    if checkpoint is None:
        return None
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{path} names the checkpoint {checkpoint}, which does not exist")
    ema = checkpoint / EMA_FOLDER
    use_ema = (ema / FLOW_CONFIG).is_file() and (ema / FLOW_WEIGHTS).is_file()
    transformer = ema if use_ema else checkpoint
    if not (transformer / FLOW_WEIGHTS).is_file():
        raise FileNotFoundError(f"the checkpoint {checkpoint} holds no {FLOW_WEIGHTS}")
    train = _json(checkpoint / RUN_NAME).get("train") or {}
    config = FlowConfig.load(transformer / FLOW_CONFIG)
    labels = None
    names = list(_json(checkpoint / DATA_NAME).get("class_names") or [])
    if names and config.num_classes:  # classes without a subfolder keep their index as a name
        labels = tuple(names[: config.num_classes]) + tuple(
            str(i) for i in range(len(names), config.num_classes)
        )
    text_encoder = _folder(train.get("text_encoder"))
    tokenizer = text_encoder if text_encoder and (text_encoder / "spiece.model").is_file() else None
    guidance = float(train.get("sample_guidance") or 0.0)
    step = checkpoint.name.removeprefix("step_").lstrip("0") or "0"
    weights = f"EMA weights (decay {train.get('ema_decay')})" if use_ema else "model weights (no EMA)"
    run_folder = checkpoint.parent.parent
    parts = PipelineParts(
        name=f"{run_folder.name} step {step}",
        transformer=transformer,
        vae=_folder(train.get("vae")),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        sampling=dataclasses.replace(GenerationSettings(), guidance=guidance),
        labels=labels,
        source=str(checkpoint.resolve()),
        description=f"{run_folder} checkpoint {checkpoint.name} (step {step}), {weights}",
    )
    parts.check()
    return parts
