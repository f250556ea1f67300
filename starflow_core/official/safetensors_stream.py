"""Stream the tensors of an official `.pth` into a safetensors file, one tensor at a time.

Peak memory is about one tensor plus a small buffer, whatever the checkpoint's size.
bfloat16 is written from float32 by rounding to nearest even, without any framework.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from starflow_core.io import atomic_path
from starflow_core.official.pth_reader import (
    _CHUNK_BYTES,
    DTYPES,
    FLOAT_DTYPES,
    TensorInfo,
    _Archive,
    _check_output_dtype,
    _select_state_dict,
    convert_float_array,
)
from starflow_core.validation import FLOAT16_MAX, refuse_float16_overflow


def stream_pth_to_safetensors(
    pth_path: str | Path,
    out_path: str | Path,
    *,
    dtype: str | None = None,
    key: str | None = None,
    drop: Iterable[str] | Callable[[str], bool] = (),
    rename: Mapping[str, str] | Callable[[str], str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Convert a torch checkpoint to safetensors holding about one tensor in memory at a time.

    The header is computed from the tensor layouts first, then each tensor's bytes are
    streamed after it, into a temporary file renamed onto `out_path` on success.
    `drop` is a collection of checkpoint names (names the file lacks are ignored, as
    deprecated buffers come and go between checkpoints) or a predicate; `rename` maps
    checkpoint names to output names (a mapping leaves unlisted names unchanged).
    `dtype` converts floating-point tensors; bfloat16 is written as safetensors "BF16".
    Returns (written output names, dropped checkpoint names).
    """
    _check_output_dtype(dtype)
    if isinstance(drop, str):
        drop = (drop,)
    should_drop = drop if callable(drop) else frozenset(drop).__contains__
    if rename is None:
        new_name: Callable[[str], str] = str
    elif callable(rename):
        new_name = rename
    else:
        new_name = lambda name: rename.get(name, name)

    with _Archive(pth_path) as archive:
        infos = _select_state_dict(archive.load_object(), key, archive.path)
        dropped = [name for name in infos if should_drop(name)]
        plan = _plan_output(infos, dropped, new_name, dtype)
        header, data_size = _safetensors_header(plan, infos, metadata)
        with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
            handle.write(len(header).to_bytes(8, "little") + header)
            for name, out_dtype in plan.values():
                array = archive.read_tensor(infos[name])
                if out_dtype == "float16" and infos[name].dtype != "float16":
                    check_float16_range(array, infos[name].dtype, archive.path, name)
                _write_tensor(handle, array, infos[name].dtype, out_dtype)
            written = handle.tell() - 8 - len(header)
            assert written == data_size, f"wrote {written} data bytes, header promised {data_size}"
    return list(plan), dropped


def _plan_output(
    infos: Mapping[str, TensorInfo], dropped: list[str], new_name: Callable[[str], str], dtype: str | None
) -> dict[str, tuple[str, str]]:
    """Output name -> (checkpoint name, output dtype), refusing two tensors with one output name."""
    plan: dict[str, tuple[str, str]] = {}
    skip = set(dropped)
    for name, info in infos.items():
        if name in skip:
            continue
        out_name = new_name(name)
        if not isinstance(out_name, str):
            raise TypeError(f"rename gave {out_name!r} for {name!r}; output names must be str")
        if out_name in plan:
            raise ValueError(f"rename maps both {plan[out_name][0]!r} and {name!r} to {out_name!r}")
        out_dtype = dtype if dtype is not None and info.dtype in FLOAT_DTYPES else info.dtype
        plan[out_name] = (name, out_dtype)
    return plan


def _safetensors_header(
    plan: Mapping[str, tuple[str, str]], infos: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None
) -> tuple[bytes, int]:
    entries: dict[str, Any] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValueError(f"safetensors metadata must map str to str; bad entries: {bad}")
        entries["__metadata__"] = dict(metadata)
    offset = 0
    for out_name, (name, out_dtype) in plan.items():
        numpy_dtype, safetensors_dtype = DTYPES[out_dtype]
        size = infos[name].numel * np.dtype(numpy_dtype).itemsize
        entries[out_name] = {
            "dtype": safetensors_dtype,
            "shape": list(infos[name].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors aligns the data section to 8 bytes
    return header, offset


def check_float16_range(array: np.ndarray, dtype: str, source: Path, name: str) -> None:
    """Refuse a tensor with finite values float16 cannot hold (they would be written as inf)."""
    values = convert_float_array(array, dtype, "float32") if dtype == "bfloat16" else array
    finite = np.abs(values[np.isfinite(values)]) if values.size else values
    largest = float(finite.max()) if finite.size else 0.0
    if largest > FLOAT16_MAX:
        refuse_float16_overflow(source, name, largest)


def _write_tensor(handle: BinaryIO, array: np.ndarray, source: str, target: str) -> None:
    """Write C-order bytes in slices along the first axis, so conversions need only a chunk of scratch."""
    if array.size == 0:
        return
    if array.flags.c_contiguous:  # also every 0-d array
        array = array.reshape(-1)
    rows = max(1, _CHUNK_BYTES // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        block = array[start : start + rows]
        if source != target:
            block = convert_float_array(block, source, target)
        handle.write(np.ascontiguousarray(block).data)
