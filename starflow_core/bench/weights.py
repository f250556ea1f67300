"""Random benchmark weights in our folder format, built with numpy: the same folder for both twins.

Every tensor is drawn like the twins' own initialisation (Linear: uniform +-1/sqrt(fan_in);
LayerNorm: ones and zeros; RMSNorm offsets: zeros; learned embeddings: N(0, 0.01)),
except that proj_out, zero at initialisation, is drawn from N(0, proj_out_std) and the sos
embedding from N(0, 1), so that no block is the identity and Jacobi sampling has to iterate.
Tensors are generated and written one at a time, so a 3B-shaped folder needs about one
tensor of memory (bfloat16 is written by rounding float32 to nearest even).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path
from starflow_core.official.convert import CONFIG_NAME, WEIGHTS_NAME
from starflow_core.official.pth_reader import convert_float_array
from starflow_core.official.shapes import expected_weight_shapes

from .settings import BenchSettings, bench_config, trained_folder

SAFETENSORS_DTYPES = {"float32": ("F32", 4), "bfloat16": ("BF16", 2)}


def linear_fan_in(name: str, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The input width of the Linear that `name` is the weight or bias of; None for other tensors."""
    weight = name.removesuffix(".bias") + ".weight" if name.endswith(".bias") else name
    shape = shapes.get(weight, ())
    return shape[1] if weight.endswith(".weight") and len(shape) == 2 else None


def random_tensor(
    name: str,
    shape: tuple[int, ...],
    fan_in: int | None,
    layer_norm: bool,
    proj_out_std: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One float32 tensor for weight `name`; `fan_in` is set for a Linear's weight and bias,
    `layer_norm` for a norm that has a bias (LayerNorm; the RMSNorms have none)."""
    if name.endswith("proj_out.weight"):
        return rng.normal(0.0, proj_out_std, shape).astype(np.float32)
    if name.endswith("sos_embed"):
        return rng.standard_normal(shape, dtype=np.float32)
    if name.endswith(("pos_embed", "class_embed")):
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)
    if name == "var":
        return np.ones(shape, np.float32)  # TARFlow's prior variance
    if fan_in is not None:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if name.endswith(".weight") and not layer_norm:
        return np.zeros(
            shape, np.float32
        )  # RMSNorm (final, qk, post, pre): weight stored as an offset from 1
    return np.full(shape, 1.0 if name.endswith(".weight") else 0.0, np.float32)  # LayerNorm


def build_random_folder(config: FlowConfig, folder: str | Path, settings: BenchSettings) -> Path:
    """Write config.json and model.safetensors with random weights (settings: seed, proj_out_std, dtype)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = expected_weight_shapes(config)
    code, itemsize = SAFETENSORS_DTYPES[settings.dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data section to 8 bytes
    rng = np.random.default_rng(settings.seed)
    with atomic_path(folder / WEIGHTS_NAME) as tmp, open(tmp, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for name, shape in shapes.items():
            layer_norm = name.removesuffix(".weight") + ".bias" in shapes or name.endswith(".bias")
            fan_in = linear_fan_in(name, shapes)
            tensor = random_tensor(name, shape, fan_in, layer_norm, settings.proj_out_std, rng)
            handle.write(np.ascontiguousarray(convert_float_array(tensor, "float32", settings.dtype)).data)
    config.save(folder / CONFIG_NAME)
    return folder


@contextlib.contextmanager
def model_folder(settings: BenchSettings) -> Iterator[Path]:
    """The folder to time: --weights as it is, or random weights in a temporary folder."""
    if settings.weights:
        yield trained_folder(settings.weights)
        return
    with tempfile.TemporaryDirectory() as root:
        yield build_random_folder(bench_config(settings), Path(root) / settings.preset, settings)
