"""Reading the structured files this project reads, checked for shape and not only parsed.

Every reader of a JSON, YAML or safetensors file goes through here, so a damaged or
hand-edited file ends in one kind of message: the file's name, what is wrong with it, and
the fix; never a KeyError or TypeError from deep inside the code that uses the value. The
errors are ValueErrors (FileFormatError), which the command lines report in one line (exit 2).

Inputs that are not regular files (a FIFO, a device) are refused before they are opened:
reading one blocks until another process writes, or never ends (/dev/zero).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MISSING = object()

# safetensors dtypes -> bytes per element (the format's own list)
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class FileFormatError(ValueError):
    """A file this project reads is damaged or not of the expected shape (the message names it)."""


# ----- plain files --------------------------------------------------------------------------
def refuse_special_file(path: str | Path, role: str) -> None:
    """Raise if `path` exists but is neither a regular file nor a folder (a FIFO, a device, a
    socket): opening it would block or read forever. A missing path is left to the caller."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise FileFormatError(f"{role} {path} is {kind}, not a file; give a regular file")


def read_text(path: str | Path, role: str = "file") -> str:
    """A UTF-8 text file's content; a FIFO or device, or bytes that are not UTF-8, are named."""
    path = Path(path)
    refuse_special_file(path, role)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileFormatError(
            f"{path} is not UTF-8 text (byte {err.start} is {data[err.start : err.start + 1]!r}); "
            "save it as UTF-8"
        ) from None


def parse_json(text: str | bytes, source: str, fix: str) -> Any:
    """JSON from `text`, with `source` (a file name) and `fix` in the message if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FileFormatError(
            f"{source} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); {fix}"
        ) from None
    except UnicodeDecodeError:
        raise FileFormatError(f"{source} is not UTF-8 text; {fix}") from None
    except RecursionError:
        raise FileFormatError(f"{source} is nested too deeply to be read; {fix}") from None


def read_json(path: str | Path, fix: str, role: str = "file") -> Any:
    return parse_json(read_text(path, role), str(path), fix)


def read_json_object(path: str | Path, fix: str, role: str = "file") -> dict[str, Any]:
    """A JSON file that must hold an object (a mapping): its name and the fix on any fault."""
    document = read_json(path, fix, role)
    return expect(document, "object", str(path), fix)


def load_yaml(text: str, source: str, fix: str) -> Any:
    """YAML from `text`: python tags (which would build objects or run code) refused by name,
    syntax errors with the line."""
    from starflow_core.extras import require

    yaml = require("yaml", f"reading {source}")
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        problem = f"{err.problem or ''} {err.context or ''}".strip()
        tag = next((word for word in problem.replace("'", " ").split() if "python/" in word), None)
        where = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        if tag is not None or "python" in problem:
            raise FileFormatError(
                f"{source} uses the YAML tag {tag or '!!python'}{where}, which builds Python "
                f"objects (it could run code); it is refused: write plain values instead"
            ) from None
        raise FileFormatError(f"{source} is not plain YAML{where}: {problem}; {fix}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise FileFormatError(f"{source} is not valid YAML{where}: {problem}; {fix}") from None
    except RecursionError:
        raise FileFormatError(f"{source} is nested too deeply to be read; {fix}") from None


# ----- shapes -------------------------------------------------------------------------------
_KINDS = {
    "object": "a JSON object (a mapping)",
    "list": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a finite number",
    "boolean": "true or false",
    "strings": "a list of strings",
    "integers": "a list of integers",
    "numbers": "a list of finite numbers",
    "numeric": "a finite number (or a string holding one)",
}


def describe(value: Any) -> str:
    """A value as a message shows it: its JSON kind and (short) value."""
    if value is None:
        return "null"
    kind = {dict: "an object", list: "a list", str: "the string", bool: "", int: "", float: ""}.get(
        type(value), f"a {type(value).__name__}"
    )
    text = repr(value) if not isinstance(value, dict | list) else ""
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{kind} {text}".strip()


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "numeric":
        try:
            return _is_kind(float(value) if isinstance(value, str) else value, "number")
        except ValueError:
            return False
    if kind in ("strings", "integers", "numbers"):
        return isinstance(value, list) and all(_is_kind(item, kind[:-1]) for item in value)
    raise ValueError(f"unknown kind {kind!r}")


def expect(value: Any, kind: str, where: str, fix: str) -> Any:
    """`value` if it is of `kind` (see _KINDS), else a FileFormatError naming `where` and `fix`."""
    if not _is_kind(value, kind):
        raise FileFormatError(f"{where} must be {_KINDS[kind]}, not {describe(value)}; {fix}")
    return value


def field(
    document: Mapping[str, Any],
    key: str,
    kind: str,
    source: str,
    fix: str,
    default: Any = MISSING,
    nullable: bool = False,
) -> Any:
    """document[key] checked to be of `kind`; `default` when absent (required without one)."""
    if key not in document:
        if default is MISSING:
            raise FileFormatError(f"{source} has no {key!r}; {fix}")
        return default
    value = document[key]
    if value is None and nullable:
        return None
    return expect(value, kind, f"{source}: {key!r}", fix)


# ----- safetensors --------------------------------------------------------------------------
def check_safetensors_header(header: Any, path: str | Path, data_len: int, fix: str) -> dict:
    """A parsed safetensors header checked against the format: an object of tensors, each with
    a known dtype, a shape and data_offsets inside the file that match shape x dtype size."""
    expect(header, "object", f"{path}: the safetensors header", fix)
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if name == "__metadata__":
            if entry is not None and not (
                isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())
            ):
                raise FileFormatError(f"{path}: __metadata__ must map names to strings; {fix}")
            continue
        expect(entry, "object", where, fix)
        dtype = field(entry, "dtype", "string", where, fix)
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            raise FileFormatError(f"{where} has the unknown dtype {dtype!r}; {fix}")
        shape = field(entry, "shape", "integers", where, fix)
        offsets = field(entry, "data_offsets", "integers", where, fix)
        if any(n < 0 for n in shape) or len(offsets) != 2:
            raise FileFormatError(f"{where} has shape {shape} and data_offsets {offsets}; {fix}")
        begin, end = offsets
        size = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
        if not 0 <= begin <= end or end - begin != size:
            raise FileFormatError(
                f"{where}: data_offsets {offsets} hold {end - begin} bytes, but {dtype} x {shape} "
                f"needs {size}; {fix}"
            )
        if end > data_len:
            raise FileFormatError(
                f"{path} is truncated: the header describes {end} bytes of tensor data but the file "
                f"holds {data_len}; {fix}"
            )
    return header


# ----- the diffusers VAE's config.json --------------------------------------------------------
_VAE_FIELDS = {
    "in_channels": "integer",
    "out_channels": "integer",
    "latent_channels": "integer",
    "layers_per_block": "integer",
    "norm_num_groups": "integer",
    "block_out_channels": "integers",
    "down_block_types": "strings",
    "up_block_types": "strings",
    "act_fn": "string",
    "scaling_factor": "number",
    "force_upcast": "boolean",
    "use_quant_conv": "boolean",
    "use_post_quant_conv": "boolean",
    "mid_block_add_attention": "boolean",
}


def read_vae_config(path: str | Path) -> dict[str, Any]:
    """A diffusers AutoencoderKL config.json, every field the twins use of the right type:
    counts positive integers, block_out_channels a non-empty list of them."""
    path = Path(path)
    refuse_special_file(path, "the VAE config")
    if not path.is_file():
        raise FileNotFoundError(f"VAE config not found: {path}")
    fix = "fix the file or convert the VAE again"
    config = read_json_object(path, fix)
    for key, kind in _VAE_FIELDS.items():
        if key not in config:
            continue
        value = config[key]
        if kind == "integers" and not (_is_kind(value, kind) and value and min(value) >= 1):
            raise FileFormatError(
                f"{path}: {key!r} must be a non-empty list of integers >= 1, not {describe(value)}; {fix}"
            )
        field(config, key, kind, str(path), fix)
        if kind == "integer" and value < 1:
            raise FileFormatError(f"{path}: {key!r} must be an integer >= 1, not {value}; {fix}")
    if config.get("scaling_factor", 1) <= 0:
        raise FileFormatError(f"{path}: 'scaling_factor' must be > 0, not {config['scaling_factor']}; {fix}")
    return config


# ----- an encoded data set's index.json -----------------------------------------------------------
def read_shard_index(path: str | Path) -> dict:
    """The index.json of a folder of encoded shards, checked for every field the data loaders read."""
    fix = "encode the image folder again (encode_dataset)"
    index = read_json_object(path, fix)
    field(index, "in_channels", "integer", str(path), fix)
    shards = field(index, "shards", "list", str(path), fix)
    for number, shard in enumerate(shards):
        where = f"{path}: shard {number}"
        expect(shard, "object", where, fix)
        field(shard, "file", "string", where, fix)
        field(shard, "bucket", "string", where, fix)
        if field(shard, "count", "integer", where, fix) < 0:
            raise FileFormatError(f"{where} has a negative count; {fix}")
    field(index, "null_text", "string", str(path), fix, default=None)
    return index


# ----- numbers a conversion cannot hold ----------------------------------------------------------
FLOAT16_MAX = 65504.0


def refuse_float16_overflow(source: str | Path, name: str, largest: float | None = None) -> None:
    """A tensor whose values float16 cannot hold (they would be saved as inf): refused by name."""
    held = f"values up to {largest:g}" if largest is not None else "values"
    raise FileFormatError(
        f"{source}: tensor {name} holds {held} beyond float16's range (±{FLOAT16_MAX:g}), which would "
        "become inf; keep float32 or convert to bfloat16 (--dtype bfloat16)"
    )
