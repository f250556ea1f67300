"""Read PyTorch zip checkpoints (.pth) without torch, one tensor at a time.

A `.pth` written by `torch.save` (torch >= 1.6) is a zip holding `<archive>/data.pkl`
(a pickle describing the object), one `<archive>/data/<key>` record per storage (raw
little-endian bytes) and `<archive>/byteorder`. Unpickling an untrusted pickle can run
arbitrary code, so `data.pkl` is read by a restricted unpickler that resolves only the
names needed to describe tensors and refuses everything else, as
`torch.load(..., weights_only=True)` does.

Unpickling reads no tensor data: it yields `TensorInfo` descriptors (storage key, dtype,
offset, shape, stride). Tensors are then read one by one, so converting the 12 GB
STARFlow checkpoint needs memory for about one tensor, not a copy of the model.

bfloat16: numpy has no bfloat16, so bf16 tensors are returned as their raw uint16 bit
patterns (lossless, half the memory of widening). Pass `dtype="float32"` to widen them;
`TensorInfo.dtype` says which tensors hold bf16 bits.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from starflow_core.validation import refuse_float16_overflow

__all__ = [
    "CheckpointFormatError",
    "StorageRef",
    "TensorInfo",
    "UnsafeCheckpointError",
    "convert_float_array",
    "iter_pth_tensors",
    "list_pth_tensors",
    "read_pth_state_dict",
]

# torch dtype name -> (numpy dtype of the stored bytes, safetensors dtype name)
DTYPES: dict[str, tuple[str, str]] = {
    "float64": ("<f8", "F64"),
    "float32": ("<f4", "F32"),
    "float16": ("<f2", "F16"),
    "bfloat16": ("<u2", "BF16"),  # bit patterns, see the module docstring
    "int64": ("<i8", "I64"),
    "int32": ("<i4", "I32"),
    "int16": ("<i2", "I16"),
    "int8": ("i1", "I8"),
    "uint8": ("u1", "U8"),
    "bool": ("?", "BOOL"),
}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")

_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# Pickle protocol 2 followed by torch's legacy magic number (a pickled long).
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_CHUNK_BYTES = 1 << 20  # read/convert/write granularity: bounds the memory beyond one tensor


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The checkpoint's pickle references code other than tensor rebuilding; nothing was run.
    (A ValueError too: a refused file is bad input, reported like any other.)"""


class CheckpointFormatError(ValueError):
    """The file is not a readable torch zip checkpoint (legacy, truncated, corrupt, big-endian)."""


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """One `<archive>/data/<key>` record: `numel` elements of `dtype`."""

    key: str
    dtype: str
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in its storage; offset and strides count elements, as in torch."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def element_span(self) -> tuple[int, int]:
        """The [first, stop) range of storage elements this tensor touches."""
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        return self.offset, last + 1


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: a plain value, so a pickle cannot call it."""

    dtype: str


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> TensorInfo:
    """Replaces torch._utils._rebuild_tensor(_v2); extra arguments (requires_grad, hooks) carry no data."""
    info = TensorInfo(storage, offset, tuple(shape), tuple(stride))
    _check_layout(info)
    return info


def _check_layout(info: TensorInfo) -> None:
    """Refuse layouts that would read outside their storage.

    Checked when unpickling and again before reading: a pickle's BUILD opcode can rewrite a
    descriptor's fields (even a frozen dataclass's) after it was made.
    """
    storage = info.storage
    if not (
        isinstance(storage, StorageRef)
        and isinstance(storage.dtype, str)
        and storage.dtype in DTYPES
        and isinstance(storage.numel, int)
    ):
        raise CheckpointFormatError(f"tensor built from {storage!r:.80}, expected a storage")
    if not (isinstance(info.shape, tuple) and isinstance(info.stride, tuple)):
        raise CheckpointFormatError(f"bad tensor layout: shape={info.shape!r:.80} stride={info.stride!r:.80}")
    values = (info.offset, *info.shape, *info.stride)
    if not all(isinstance(v, int) and v >= 0 for v in values) or len(info.shape) != len(info.stride):
        raise CheckpointFormatError(
            f"bad tensor layout: offset={info.offset} shape={info.shape} stride={info.stride}"
        )
    if info.numel and info.element_span()[1] > storage.numel:
        raise CheckpointFormatError(
            f"tensor {info.shape} at offset {info.offset} overruns its storage of {storage.numel} elements"
        )


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """nn.Parameter carries the same data as its tensor; requires_grad and hooks are dropped."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TensorUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; storages become `StorageRef`s without reading them."""

    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data))
        self._source = source
        self._storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            # A fresh value per lookup: a BUILD opcode could otherwise alter one shared by later loads.
            return _StorageType(_STORAGE_DTYPES[name])
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(
                f"{self._source} carries code ({module}.{name}) and was refused, as "
                "torch.load(..., weights_only=True) would refuse it: only tensors, dicts and plain values "
                "are loaded. If you trust the file, load it with torch and re-save its state_dict."
            )
        return found

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid  # location (cpu, cuda:0) does not matter here
        if not (
            isinstance(storage_type, _StorageType)
            and storage_type.dtype in _STORAGE_DTYPES.values()
            and isinstance(key, str)
            and isinstance(numel, int)
        ):
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        ref = self._storages.setdefault(key, StorageRef(key, storage_type.dtype, numel))
        if ref != StorageRef(key, storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key} is described twice with different types or sizes")
        return ref


# a record (data.pkl, byteorder) read whole may inflate to at most this, or twice the file's size:
# torch stores records uncompressed, and the pickle of a 3B model's state_dict is under 1 MB
MAX_RECORD_BYTES = 64 * 2**20


class _Archive:
    """An open torch zip checkpoint: its unpickled object and its storage records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip = _open_zip(self.path)
        try:
            self._prefix = _archive_prefix(self._zip, self.path)
            self._check_byteorder()
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def _read_record(self, name: str) -> bytes:
        inflated = self._zip.getinfo(self._prefix + name).file_size
        limit = max(MAX_RECORD_BYTES, 2 * self.path.stat().st_size)
        if inflated > limit:  # a zip bomb: torch stores its records uncompressed
            raise CheckpointFormatError(
                f"{self.path}: its record {name} would inflate to {inflated:,} bytes from a file of "
                f"{self.path.stat().st_size:,}; refused before reading (not a checkpoint torch wrote)"
            )
        try:
            return self._zip.read(self._prefix + name)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise CheckpointFormatError(f"{self.path} is corrupt ({name}: {err}); re-download it") from err

    def _check_byteorder(self) -> None:
        # Files written before torch recorded byte order are little-endian in practice.
        if self._prefix + "byteorder" not in self._zip.NameToInfo:
            return
        order = self._read_record("byteorder").decode("ascii", "replace").strip()
        if order != "little":
            raise CheckpointFormatError(
                f"{self.path} stores {order}-endian tensors; only little-endian checkpoints are supported. "
                "Re-save it with torch on a little-endian machine."
            )

    def load_object(self) -> Any:
        """Unpickle data.pkl into plain containers whose tensors are `TensorInfo`s."""
        data = self._read_record("data.pkl")
        try:
            return _TensorUnpickler(data, str(self.path)).load()
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # any other failure means a damaged or unsupported pickle
            raise CheckpointFormatError(f"{self.path}: data.pkl could not be read ({err})") from err

    def read_tensor(self, info: TensorInfo) -> np.ndarray:
        """The tensor as a numpy view of a fresh buffer holding just the storage bytes it uses."""
        _check_layout(info)
        np_dtype = np.dtype(DTYPES[info.dtype][0])
        if info.numel == 0:
            return np.empty(info.shape, np_dtype)
        first, stop = info.element_span()
        flat = self._read_elements(info.storage, first, stop, np_dtype)
        if info.stride == _contiguous_strides(info.shape):
            return flat.reshape(info.shape)  # owns a fresh buffer, so it can be writable
        strides = tuple(s * np_dtype.itemsize for s in info.stride)
        # Read-only: a stride of 0 (an expanded tensor) makes several elements share memory.
        return np.lib.stride_tricks.as_strided(flat, info.shape, strides, writeable=False)

    def _read_elements(self, storage: StorageRef, first: int, stop: int, np_dtype: np.dtype) -> np.ndarray:
        name = f"{self._prefix}data/{storage.key}"
        record = self._zip.NameToInfo.get(name)
        need = storage.numel * np_dtype.itemsize
        if record is None or record.file_size < need:
            found = "missing" if record is None else f"{record.file_size} bytes"
            raise CheckpointFormatError(f"{self.path}: storage {storage.key} needs {need} bytes, {found}")
        out = np.empty((stop - first) * np_dtype.itemsize, np.uint8)
        try:
            with self._zip.open(record) as handle:
                handle.seek(first * np_dtype.itemsize)
                _read_exactly(handle, memoryview(out))
                if first == 0 and stop == storage.numel:
                    handle.read(1)  # reach the end of the record so zipfile checks its CRC
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            message = f"{self.path}: storage {storage.key} is corrupt ({err}); re-download it"
            raise CheckpointFormatError(message) from err
        return out.view(np_dtype)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _read_exactly(handle: BinaryIO, target: memoryview) -> None:
    filled = 0
    while filled < len(target):
        count = handle.readinto(target[filled : filled + _CHUNK_BYTES])
        if not count:
            raise EOFError("record ends early")
        filled += count


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        if head.startswith(_LEGACY_MAGIC) or head[:1] == b"\x80" or _is_tar(path):
            raise CheckpointFormatError(
                f"{path} is a legacy (non-zip) torch checkpoint, which is not read without torch. "
                "Re-save it with torch >= 1.6: torch.save(torch.load(path, weights_only=True), new_path), "
                "or convert it with the torch twin (starflow_torch) on a machine that has torch."
            ) from err
        if head.startswith(b"PK"):
            message = f"{path} is a truncated or corrupt zip ({err}); re-download it"
            raise CheckpointFormatError(message) from err
        raise CheckpointFormatError(f"{path} is not a torch checkpoint (not a zip file)") from err


def _is_tar(path: Path) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _archive_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            f"{path} is a zip but not a torch checkpoint "
            f"(expected one <archive>/data.pkl, found {len(pickles)})"
        )
    return pickles[0][: -len("data.pkl")]


def _select_state_dict(obj: Any, key: str | None, path: Path) -> dict[str, TensorInfo]:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise KeyError(f"{path} has no top-level key {key!r}; top level: {keys}")
        obj = obj[key]
    is_tensor_dict = isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, TensorInfo) for k, v in obj.items()
    )
    if is_tensor_dict:
        return dict(obj)
    if isinstance(obj, dict):
        where = f"[{key!r}]" if key is not None else "top level"
        summary = {str(k): type(v).__name__ for k, v in obj.items()}
        raise ValueError(
            f"{path}: the {where} is not a dict of tensors; pass key= one of its dict entries. "
            f"Entries: {json.dumps(summary)[:2000]}"
        )
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def list_pth_tensors(path: str | Path, *, key: str | None = None) -> dict[str, TensorInfo]:
    """Names and layouts of all tensors in the checkpoint, in file order, without reading their data.

    `key` selects a wrapped state dict, e.g. key="model" for {"model": state_dict, "epoch": 3}.
    """
    with _Archive(path) as archive:
        return _select_state_dict(archive.load_object(), key, archive.path)


def iter_pth_tensors(
    path: str | Path, *, dtype: str | None = None, key: str | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) one tensor at a time, in file order.

    `dtype` ("float32" | "float16" | "bfloat16" | None to keep) converts floating-point
    tensors only; integer and bool tensors keep their type. bfloat16 arrays are uint16
    bit patterns (see the module docstring). Each array owns its memory.
    """
    _check_output_dtype(dtype)
    with _Archive(path) as archive:
        for name, info in _select_state_dict(archive.load_object(), key, archive.path).items():
            array = archive.read_tensor(info)
            if dtype is not None and info.dtype in FLOAT_DTYPES and info.dtype != dtype:
                converted = convert_float_array(array, info.dtype, dtype)
                if dtype == "float16" and np.isinf(converted).sum() > np.isinf(array).sum():
                    refuse_float16_overflow(archive.path, name)
                yield name, converted
            else:
                yield name, _c_order(array)


def read_pth_state_dict(
    path: str | Path, *, dtype: str | None = None, key: str | None = None
) -> dict[str, np.ndarray]:
    """The whole state dict in memory (for small files); same conventions as `iter_pth_tensors`."""
    return dict(iter_pth_tensors(path, dtype=dtype, key=key))


def convert_float_array(array: np.ndarray, source: str, target: str) -> np.ndarray:
    """Convert between float dtypes by name, bfloat16 being uint16 bits; rounds to nearest even like torch."""
    if source == target:
        return _c_order(array)
    if source == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    if target == "bfloat16":
        return _float32_to_bfloat16_bits(array.astype(np.float32, copy=False))
    return array.astype(target)


def _float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    bits = _c_order(values).view(np.uint32)
    # Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate.
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():  # rounding could carry a NaN's payload into the exponent; keep it a quiet NaN
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def _c_order(array: np.ndarray) -> np.ndarray:
    """Like np.ascontiguousarray, but keeps 0-d arrays 0-d."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _check_output_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {OUTPUT_DTYPES} or None to keep, got {dtype!r}")
