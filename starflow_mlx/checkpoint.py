"""Loading and saving weights: official `.pth` files and our safetensors folders.

Our folder format: `config.json` (FlowConfig) + `model.safetensors` with the official
tensor names, deprecated buffers dropped. Official pickles are read without torch by
a restricted unpickler that refuses files carrying code (as weights_only=True does).

Loading is tensor by tensor: the model is built lazily (MLX arrays are not allocated until
evaluated, and the file's values replace them before that), every tensor is read, cast to
the target dtype (and quantized, when asked) and evaluated on its own, so a full-precision
copy of the model never exists next to the target one: the peak is the target-dtype model
plus one tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path, read_safetensors_header, safetensors_shapes
from starflow_core.official.arguments import resolve_config
from starflow_core.official.keys import check_weights, official_to_ours, split_deprecated
from starflow_core.official.pth_reader import iter_pth_tensors, list_pth_tensors
from starflow_core.sources.pipeline_folder import flow_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WRAPPER_KEYS = ("model", "state_dict", "ema")  # official training checkpoints nest the weights


def official_state_dict_key(path: str | Path) -> str | None:
    """None for a plain state_dict, else the wrapper key ("model" | "state_dict" | "ema") holding it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        list_pth_tensors(path)
        return None
    except ValueError as not_plain:
        for wrapper in WRAPPER_KEYS:
            try:
                list_pth_tensors(path, key=wrapper)
                return wrapper
            except (KeyError, ValueError):
                continue
        raise not_plain


def read_official_state_dict(path: str | Path) -> dict[str, mx.array]:
    """The tensors of an official .pth (all in memory, fp32), plain or wrapped as {"model": ...}."""
    key = official_state_dict_key(path)
    return {name: mx.array(array) for name, array in iter_pth_tensors(path, dtype="float32", key=key)}


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(v.shape) for name, v in tree_flatten(model.parameters())}


def stream_into(
    model: nn.Module,
    tensors: Iterable[tuple[str, mx.array]],
    dtype: mx.Dtype | None = None,
    quantize_now: Callable[[str], bool] = lambda name: False,
) -> None:
    """Set each (name, array) into `model`, cast to `dtype` (floating tensors) and evaluated one at a
    time. `tensors` may be lazy (mx.load) or numpy-backed; the caller has checked the names.

    A `weight` whose module is a QuantizedLinear / QuantizedEmbedding and for which
    `quantize_now(name)` holds is full precision in the file: it is quantized here, so the
    full-precision copy lives only while its own tensor is being converted.
    """
    modules = dict(model.named_modules())
    for name, value in tensors:
        module_path, _, leaf = name.rpartition(".")
        module = modules[module_path]
        if dtype is not None and mx.issubdtype(value.dtype, mx.floating):
            value = value.astype(dtype)
        if leaf == "weight" and quantize_now(name):
            weight, scales, *biases = mx.quantize(value, module.group_size, module.bits, mode=module.mode)
            mx.eval(weight, scales, *biases)
            module["weight"], module["scales"] = weight, scales
            if biases:
                module["biases"] = biases[0]
        else:
            mx.eval(value)
            module[leaf] = value
        del value  # free the file's copy before the next tensor is read
    mx.clear_cache()  # hand the per-tensor scratch buffers back


def _skip(tensors: Iterable[tuple[str, mx.array]], names: set[str]) -> Iterable[tuple[str, mx.array]]:
    return ((name, value) for name, value in tensors if name not in names)


def _popping(tensors: dict[str, mx.array]) -> Iterable[tuple[str, mx.array]]:
    """(name, array) taken out of a dict of lazy arrays one by one (an evaluated array held by the
    dict would keep the file's copy of every tensor alive until the end), largest first: the
    largest conversion's scratch then meets the least resident memory."""
    for name in sorted(tensors, key=lambda key: tensors[key].nbytes, reverse=True):
        yield name, tensors.pop(name)


def load_official(
    cls, path: str | Path, config: FlowConfig | dict | str | Path, strict: bool = False
) -> nn.Module:
    config = resolve_config(config)
    key = official_state_dict_key(path)
    infos = list_pth_tensors(path, key=key)
    kept, _ = split_deprecated(infos, config.family)
    model = cls(config)  # lazy: never materialised, every parameter is replaced below
    found = {official_to_ours(name): tuple(infos[name].shape) for name in kept}
    unexpected = set(check_weights(parameter_shapes(model), found, str(path), strict))
    kept = set(kept)
    official = (
        (official_to_ours(name), mx.array(array))
        for name, array in iter_pth_tensors(path, dtype="float32", key=key)
        if name in kept
    )
    stream_into(model, _skip(official, unexpected))
    return model


def load_pretrained(
    cls,
    folder: str | Path,
    dtype: mx.Dtype | None = None,
    quantize: tuple[int, int] | None = None,
    strict: bool = False,
) -> nn.Module:
    """Our folder -> model in `dtype`; `quantize` = (bits, group_size) quantizes the transformer
    linears as they load (see quantize.py), so the full-precision model is never resident."""
    from .quantize import quantize_model, record_quantization

    folder = flow_folder(folder)  # a pipeline folder: its transformer/
    config = FlowConfig.load(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    found = safetensors_shapes(read_safetensors_header(weights))  # clear errors for bad files
    if config.quantization is not None and quantize is not None and tuple(quantize) != config.quantization:
        raise ValueError(
            f"{folder} holds {config.quantization[0]}-bit weights (group {config.quantization[1]}); "
            f"they cannot be re-quantized to {quantize[0]} bits: load the full-precision folder instead"
        )
    model = cls(config)  # lazy: never materialised, every parameter is replaced below
    if config.quantization is not None:
        quantize_model(model, *config.quantization)
    unexpected = set(check_weights(parameter_shapes(model), found, str(weights), strict))
    quantize_now: Callable[[str], bool] = lambda name: False
    if quantize is not None and config.quantization is None:
        record_quantization(model, *quantize)  # validates bits and group size
        quantize_model(model, *quantize)  # the structure only; the values come from the file below
        quantized = {f"{path}.weight" for path, m in model.named_modules() if hasattr(m, "scales")}
        quantize_now = quantized.__contains__
    stream_into(model, _skip(_popping(mx.load(str(weights))), unexpected), dtype, quantize_now)
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
