"""STARFlow in MLX: arrays are NHWC (batch, height, width, channels).

`import starflow_mlx` is cheap and changes nothing in the process: the classes below load
(and import mlx) on first use. On Linux, MLX's bundled BLAS is slow; call
`starflow_mlx.use_system_blas()` before anything imports mlx to run MLX's matmuls on the
system OpenBLAS (docs/blas.md). The command lines (`python -m starflow_mlx.generate`, ...)
do this themselves. It is a process-wide switch, so it is never a side effect of an import.
"""

from __future__ import annotations

import importlib

from .blas import blas_status, use_system_blas

# name -> module that defines it; imported on first attribute access (PEP 562)
_LAZY = {
    "AutoencoderKL": ".vae",
    "AutoencoderKLWan": ".wan_vae",
    "FlowConfig": "starflow_core.config",
    "SamplingStats": ".sampling",
    "StarFlow": ".model",
    "StarFlowPipeline": ".pipeline",
    "T5Tokenizer": ".text",
    "TextEncoder": ".text",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # the class names resolve lazily through __getattr__
    "AutoencoderKL",
    "AutoencoderKLWan",
    "FlowConfig",
    "SamplingStats",
    "StarFlow",
    "StarFlowPipeline",
    "T5Tokenizer",
    "TextEncoder",
    "blas_status",
    "use_system_blas",
]
