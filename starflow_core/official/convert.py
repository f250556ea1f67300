"""Official `.pth` checkpoint -> our folder (config.json + model.safetensors), without torch.

Tensors stream one at a time from the pickle's zip into the safetensors file, so the
3B checkpoint converts in about one tensor's worth of memory. Names are checked
against the configuration before anything is written: a checkpoint that does not
fit the config fails with every missing, unexpected and mis-shaped name listed.
"""

from __future__ import annotations

import json
from pathlib import Path

from starflow_core.config import FlowConfig
from starflow_core.io import atomic_path
from starflow_core.official.keys import check_weights, official_to_ours, split_deprecated
from starflow_core.official.pth_reader import list_pth_tensors
from starflow_core.official.safetensors_stream import stream_pth_to_safetensors
from starflow_core.official.shapes import expected_weight_shapes
from starflow_core.staging import check_output_apart, staged_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = ("float32", "bfloat16", "float16")


def convert_official_checkpoint(
    pth_path: str | Path,
    config: FlowConfig,
    out_dir: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    strict: bool = False,
) -> dict[str, list[str]]:
    """Write `out_dir/config.json` and `out_dir/model.safetensors`; return written and dropped names.

    Tensors the model does not use are dropped with a warning (an error when `strict`)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    pth_path, out_dir = Path(pth_path), Path(out_dir)
    if not pth_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {pth_path}")
    weights_path = out_dir / WEIGHTS_NAME
    if weights_path.exists() and not overwrite:
        raise FileExistsError(f"{weights_path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    infos = list_pth_tensors(pth_path)
    kept, dropped = split_deprecated(infos, config.family)
    unexpected = check_weights(
        expected_weight_shapes(config),
        {official_to_ours(name): tuple(infos[name].shape) for name in kept},
        str(pth_path),
        strict,
    )
    dropped += [name for name in kept if official_to_ours(name) in set(unexpected)]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = stream_pth_to_safetensors(
        pth_path,
        weights_path,
        dtype=dtype,
        drop=set(dropped),
        rename=official_to_ours,
        metadata={"format": "pt", "source": pth_path.name, "config": json.dumps(config.to_dict())},
    )
    with atomic_path(out_dir / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return {"written": list(result[0]), "dropped": list(result[1])}


# ----- official checkpoint -> our format ------------------------------------------------------
def convert_official_flow(
    pth: str | Path,
    config: FlowConfig,
    out: str | Path,
    dtype: str = "float32",
    overwrite: bool = True,
    strict: bool = False,
) -> Path:
    """Official `.pth` -> our flow folder in `dtype` (name/shape checks, then one tensor at a
    time), written into a staging folder swapped onto `out` when complete: a failure or an
    interrupt leaves an existing `out` as it was. Tensors the model does not use are dropped
    with a warning (an error when `strict`)."""
    out = Path(out)
    check_output_apart(out, [pth])
    with staged_folder(out, overwrite=overwrite) as staging:
        convert_official_checkpoint(pth, config, staging, dtype=dtype, strict=strict)
    return out
