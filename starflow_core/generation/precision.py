"""Which number formats a pipeline runs in (framework-free): dtypes, quantization, `--dtype auto`.

`auto` is bfloat16 where the arrays live on a GPU (Metal or CUDA: half the memory and the
bandwidth, and the flow's delicate arithmetic, scale, shift, log-det and guidance, is fp32
whatever the weights are) and float32 on a CPU (no fast bf16 matmuls there). The T5 encoder
never runs in float16: its activations overflow fp16's range (transformers clamps them, which
changes the features), so a float16 run encodes text in bfloat16.
"""

from __future__ import annotations

import dataclasses

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANTIZE_BITS = (4, 8)
TEXT_QUANTIZE_BITS = (8,)


def resolve_dtype(name: str, accelerated: bool) -> str:
    """ "auto" -> "bfloat16" on a GPU (accelerated) and "float32" on a CPU; other names unchanged."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {name!r}")
    if name == "auto":
        return "bfloat16" if accelerated else "float32"
    return name


def text_dtype(dtype: str) -> str:
    """The T5 encoder's dtype for a run in `dtype`: bfloat16 in place of float16."""
    return "bfloat16" if dtype == "float16" else dtype


@dataclasses.dataclass(frozen=True)
class Precision:
    """The formats of one pipeline: flow / VAE dtype, T5 dtype, optional weight quantization."""

    dtype: str = "float32"
    quantize: int | None = None  # flow transformer linears, bits (MLX)
    text_quantize: int | None = None  # T5 linears and embedding, bits (MLX)
    group_size: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"Precision.dtype must be one of {tuple(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.quantize is not None and self.quantize not in QUANTIZE_BITS:
            raise ValueError(f"flow quantization must be one of {QUANTIZE_BITS} bits, got {self.quantize}")
        if self.text_quantize is not None and self.text_quantize not in TEXT_QUANTIZE_BITS:
            raise ValueError(
                f"text encoder quantization must be one of {TEXT_QUANTIZE_BITS} bits, got {self.text_quantize}"
            )

    @property
    def text_dtype(self) -> str:
        return text_dtype(self.dtype)

    def quantization_name(self) -> str:
        parts = []
        if self.quantize is not None:
            parts.append(f"flow {self.quantize}-bit")
        if self.text_quantize is not None:
            parts.append(f"text encoder {self.text_quantize}-bit")
        return ", ".join(parts) + f" (group size {self.group_size})" if parts else "none"

    def metadata(self) -> dict[str, str]:
        """PNG text entries: the dtypes and the quantization an image was made with."""
        return {"dtype": self.dtype, "text_dtype": self.text_dtype, "quantization": self.quantization_name()}
