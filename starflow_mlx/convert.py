"""Convert official checkpoints and Hub repos into our folders; cast or quantize flow folders (MLX).

    python -m starflow_mlx.convert flow starflow_3B_t2i_256x256.pth --preset starflow-3b-t2i-256 -o flow/
    python -m starflow_mlx.convert flow flow/ -o flow-q4/ --quantize 4
    python -m starflow_mlx.convert pipeline --model starflow-3b-t2i-256 -o starflow-3b/

The conversion itself is framework-free (starflow_core.convert); MLX re-saves our flow
folders in another dtype or quantized (starflow_mlx.quantize). Installed as starflow-mlx-convert (and starflow-convert).
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first: OpenBLAS for MLX on Linux, before mlx loads)

# isort: split
import sys
from collections.abc import Sequence
from pathlib import Path

from starflow_core import convert
from starflow_core.validation import refuse_float16_overflow


def resave(folder: Path, out: Path, dtype: str | None, bits: int | None, group_size: int) -> None:
    """Load our flow folder in MLX, cast and/or quantize it (as it loads), save it to `out`."""
    import mlx.core as mx

    from .model import StarFlow

    model = StarFlow.from_pretrained(
        folder, dtype=getattr(mx, dtype) if dtype else None, quantize=bits, group_size=group_size
    )
    if dtype == "float16":  # cast as it loaded: a value float16 cannot hold is now inf
        from mlx.utils import tree_flatten

        for name, value in tree_flatten(model.parameters()):
            if mx.issubdtype(value.dtype, mx.floating) and mx.isinf(value).any().item():
                refuse_float16_overflow(folder, name)
    model.save_pretrained(out)


def main(argv: Sequence[str] | None = None) -> int:
    return convert.main(argv, resave=resave, module="starflow_mlx.convert")


if __name__ == "__main__":
    sys.exit(main())
