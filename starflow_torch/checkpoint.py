"""Loading and saving weights: official `.pth` files and our safetensors folders.

Our folder format: `config.json` (FlowConfig) + `model.safetensors` with the official
tensor names, deprecated buffers dropped. Official pickles are only ever opened
with `torch.load(weights_only=True)`, which refuses files that carry code.

Loading is tensor by tensor: the model is built on the meta device (no memory), and every
tensor is read, converted to the target dtype and put in place on its own, so a
full-precision copy of the model never exists next to the target one: the peak is the
target-dtype model plus one tensor.
"""

from __future__ import annotations

import json
import mmap
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path, read_safetensors_header
from starflow_core.official.arguments import resolve_config
from starflow_core.official.keys import check_weights, official_to_ours, split_deprecated
from starflow_core.sources.pipeline_folder import flow_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WRAPPER_KEYS = ("model", "state_dict", "ema")  # official training checkpoints nest the weights


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official .pth, memory-mapped (tensors are read when used)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_mapped(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of the memory-mapped file (copy-on-write):
    nothing is read until a tensor is used, and what is read is the OS's page cache, not the
    process's memory. `stream_into` copies each tensor out in the target dtype."""
    path = Path(path)
    header = read_safetensors_header(path)  # clear errors for missing / truncated files
    with open(path, "rb") as handle:
        data_start = 8 + int.from_bytes(handle.read(8), "little")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported safetensors dtype {entry['dtype']}")
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        first, stop = entry["data_offsets"]
        count = (stop - first) // dtype.itemsize
        flat = (
            torch.frombuffer(mapped, dtype=dtype, count=count, offset=data_start + first)
            if count
            else torch.empty(0, dtype=dtype)
        )
        tensors[name] = flat.reshape(entry["shape"])
    return tensors


def build_empty(make: Callable[[], nn.Module]) -> nn.Module:
    """A module built on the meta device: shapes only, no memory; stream_into fills it."""
    with torch.device("meta"):
        return make()


def stream_into(
    model: nn.Module,
    tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> None:
    """Put each (name, tensor) into `model` as a fresh copy in `dtype` (floating tensors) on
    `device`, one at a time; the caller has checked the names. Parameters shared between
    modules (tied embeddings) are replaced everywhere they appear."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for leaf, parameter in module._parameters.items():
            if parameter is not None:
                holders.setdefault(id(parameter), []).append((module, leaf))
    modules = dict(model.named_modules())
    for name, tensor in tensors:
        module_path, _, leaf = name.rpartition(".")
        module = modules[module_path]
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        value = tensor.to(device=device, dtype=target, copy=True)  # never a view of a mapped file
        del tensor
        if leaf in module._parameters:
            old = module._parameters[leaf]
            parameter = nn.Parameter(value, requires_grad=old.requires_grad)
            for holder, holder_leaf in holders.get(id(old), [(module, leaf)]):
                holder._parameters[holder_leaf] = parameter
        else:
            module._buffers[leaf] = value


def _load_official_into(model: nn.Module, state: dict, kept: list[str], source: str, strict: bool) -> None:
    found = {official_to_ours(name): tuple(state[name].shape) for name in kept}
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    unexpected = set(check_weights(expected, found, source, strict))
    ours = ((official_to_ours(name), state[name]) for name in kept)
    stream_into(model, ((name, t) for name, t in ours if name not in unexpected), torch.float32)


def load_official(
    cls, path: str | Path, config: FlowConfig | dict | str | Path, strict: bool = False
) -> nn.Module:
    config = resolve_config(config)
    state = read_official_state_dict(path)
    kept, _ = split_deprecated(state, config.family)
    model = build_empty(lambda: cls(config))
    _load_official_into(model, state, kept, str(path), strict)
    return model.eval()


def load_pretrained(
    cls, folder: str | Path, dtype: torch.dtype | None = None, strict: bool = False, device: str = "cpu"
) -> nn.Module:
    folder = flow_folder(folder)  # a pipeline folder: its transformer/
    config = FlowConfig.load(folder / CONFIG_NAME)
    if config.quantization is not None:
        raise ValueError(
            f"{folder} holds {config.quantization[0]}-bit MLX-quantized weights, which only starflow_mlx "
            "loads; convert the original (unquantized) weights for torch"
        )
    weights = folder / WEIGHTS_NAME
    tensors = read_safetensors_mapped(weights)
    model = build_empty(lambda: cls(config))
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    unexpected = set(check_weights(expected, found, str(weights), strict))
    stream_into(model, _popping(tensors, unexpected), dtype, device)
    return model.eval()


def _popping(tensors: dict[str, torch.Tensor], skip: set[str] = frozenset()):
    """(name, tensor) taken out of the dict one by one, leaving out `skip`, largest first (the
    largest conversion's scratch then meets the least resident memory)."""
    for name in sorted(tensors, key=lambda key: tensors[key].nbytes, reverse=True):
        tensor = tensors.pop(name)
        if name not in skip:
            yield name, tensor


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
