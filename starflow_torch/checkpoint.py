"""Loading and saving weights: official `.pth` files and our safetensors folders.

Our folder format: `config.json` (FlowConfig) + `model.safetensors` with the official
tensor names, deprecated buffers dropped. Official pickles are only ever opened
with `torch.load(weights_only=True)`, which refuses files that carry code.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path, read_safetensors_header
from starflow_core.official.arguments import resolve_config
from starflow_core.official.keys import check_weights, official_to_ours, split_deprecated

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WRAPPER_KEYS = ("model", "state_dict", "ema")  # official training checkpoints nest the weights


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))  # torch's message names the refused callable
        what = f"it references {found[1]}" if found else "it may carry pickled code"
        raise ValueError(
            f"refused to load {path}: it is not a plain tensor checkpoint ({what}). Only state_dicts "
            "loadable with torch.load(weights_only=True) are accepted; if you trust the file, load it "
            "with torch and re-save its state_dict"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {err}") from err
    for wrapper in WRAPPER_KEYS:
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return state


def _load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    check_weights(expected, {name: tuple(t.shape) for name, t in tensors.items()}, source)
    model.load_state_dict(tensors, strict=True)


def load_official(cls, path: str | Path, config: FlowConfig | dict | str | Path) -> nn.Module:
    config = resolve_config(config)
    state = read_official_state_dict(path)
    kept, _ = split_deprecated(state, config.family)
    model = cls(config)
    _load_into(model, {official_to_ours(name): state[name].float() for name in kept}, str(path))
    return model.eval()


def load_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    from safetensors.torch import load_file

    folder = Path(folder)
    config = FlowConfig.load(folder / CONFIG_NAME)
    if config.quantization is not None:
        raise ValueError(
            f"{folder} holds {config.quantization[0]}-bit MLX-quantized weights, which only starflow_mlx "
            "loads; convert the original (unquantized) weights for torch"
        )
    weights = folder / WEIGHTS_NAME
    read_safetensors_header(weights)  # clear errors for missing / truncated files
    tensors = load_file(str(weights))
    model = cls(config)
    _load_into(model, tensors, str(weights))
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def save_pretrained(model: nn.Module, folder: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write config.json and model.safetensors atomically (each file complete or untouched)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        write_safetensors(
            tmp, tensors, metadata={"format": "pt", "config": json.dumps(model.config.to_dict())}
        )
    model.config.save(folder / CONFIG_NAME)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors' save_file, with a failed write (a full disk) raised as the OSError it is
    (safetensors raises its own SafetensorError for I/O)."""
    import safetensors
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except safetensors.SafetensorError as err:
        raise OSError(f"cannot write {path}: {err}") from err
