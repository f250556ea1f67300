"""Loading and saving weights: official `.pth` files and our safetensors folders.

Our folder format: `config.json` (FlowConfig) + `model.safetensors` with the official
tensor names, deprecated buffers dropped. Official pickles are read without torch by
a restricted unpickler that refuses files carrying code (as weights_only=True does).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path, read_safetensors_header
from starflow_core.official.arguments import resolve_config
from starflow_core.official.keys import check_weights, official_to_ours, split_deprecated
from starflow_core.official.pth_reader import read_pth_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WRAPPER_KEYS = ("model", "state_dict", "ema")  # official training checkpoints nest the weights


def read_official_state_dict(path: str | Path) -> dict[str, mx.array]:
    """The tensors of an official .pth, plain or wrapped as {"model" | "state_dict" | "ema": ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        arrays = read_pth_state_dict(path, dtype="float32")
    except ValueError as not_plain:
        for wrapper in WRAPPER_KEYS:
            try:
                arrays = read_pth_state_dict(path, dtype="float32", key=wrapper)
                break
            except (KeyError, ValueError):
                continue
        else:
            raise not_plain
    return {name: mx.array(array) for name, array in arrays.items()}


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(v.shape) for name, v in tree_flatten(model.parameters())}


def _load_into(model: nn.Module, tensors: dict[str, mx.array], source: str) -> None:
    check_weights(parameter_shapes(model), {name: tuple(t.shape) for name, t in tensors.items()}, source)
    model.load_weights(list(tensors.items()), strict=True)


def load_official(cls, path: str | Path, config: FlowConfig | dict | str | Path) -> nn.Module:
    config = resolve_config(config)
    state = read_official_state_dict(path)
    kept, _ = split_deprecated(state, config.family)
    model = cls(config)
    _load_into(model, {official_to_ours(name): state[name] for name in kept}, str(path))
    mx.eval(model.parameters())
    return model


def load_pretrained(cls, folder: str | Path, dtype: mx.Dtype | None = None) -> nn.Module:
    folder = Path(folder)
    config = FlowConfig.load(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    read_safetensors_header(weights)  # clear errors for missing / truncated files
    tensors = mx.load(str(weights))
    model = cls(config)
    if config.quantization is not None:
        from .quantize import quantize_model

        quantize_model(model, *config.quantization)
    _load_into(model, tensors, str(weights))
    if dtype is not None:
        model.set_dtype(dtype)
    mx.eval(model.parameters())
    return model


def save_pretrained(model: nn.Module, folder: str | Path, dtype: mx.Dtype | None = None) -> None:
    """Write config.json and model.safetensors atomically (each file complete or untouched)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        if dtype is not None and mx.issubdtype(value.dtype, mx.floating):
            value = value.astype(dtype)
        tensors[name] = value
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        target = tmp.with_suffix(".safetensors")
        try:
            write_safetensors(
                target, tensors, metadata={"format": "mlx", "config": json.dumps(model.config.to_dict())}
            )
        except BaseException:
            target.unlink(missing_ok=True)  # a half-written file (MLX wants the .safetensors suffix)
            raise
        target.replace(tmp)
    model.config.save(folder / CONFIG_NAME)


def write_safetensors(path: Path, tensors: dict[str, mx.array], metadata: dict[str, str]) -> None:
    """mx.save_safetensors, with a failed write (a full disk) raised as the OSError it is
    (MLX raises RuntimeError for I/O)."""
    try:
        mx.save_safetensors(str(path), tensors, metadata=metadata)
    except RuntimeError as err:
        raise OSError(f"cannot write {path}: {err}") from err
