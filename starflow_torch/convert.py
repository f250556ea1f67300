"""Convert official checkpoints and Hub repos into our folders; cast flow folders (PyTorch).

    python -m starflow_torch.convert flow starflow_3B_t2i_256x256.pth --preset starflow-3b-t2i-256 -o flow/
    python -m starflow_torch.convert flow flow/ -o flow-bf16/ --dtype bfloat16

The twin of `python -m starflow_mlx.convert`: the conversion itself is framework-free
(starflow_core.convert); torch re-saves our flow folders in another dtype. Quantization is
MLX's (`--quantize` is refused here with the command that does it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from starflow_core import convert
from starflow_core.validation import FLOAT16_MAX, refuse_float16_overflow


def resave(folder: Path, out: Path, dtype: str | None, bits: int | None, group_size: int) -> None:
    """Load our flow folder in torch, cast it, save it to `out`."""
    if bits is not None:
        raise NotImplementedError("quantization is MLX's: use python -m starflow_mlx.convert ... --quantize")
    import torch

    from .model import StarFlow

    model = StarFlow.from_pretrained(folder)
    if dtype == "float16":
        for name, tensor in model.state_dict().items():
            largest = float(tensor.abs().max()) if tensor.is_floating_point() and tensor.numel() else 0.0
            if largest > FLOAT16_MAX:
                refuse_float16_overflow(folder, name, largest)
    model.save_pretrained(out, dtype=getattr(torch, dtype) if dtype else None)


def main(argv: Sequence[str] | None = None) -> int:
    return convert.main(argv, resave=resave, module="starflow_torch.convert")


if __name__ == "__main__":
    sys.exit(main())
