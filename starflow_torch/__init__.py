"""STARFlow in PyTorch: tensors are NCHW (batch, channels, height, width).

The twin of starflow_mlx, with the same module names, classes and weight names,
for multi-GPU training and CUDA sampling.
"""

from starflow_core.config import FlowConfig

from .model import StarFlow
from .sampling import SamplingStats

# The VAE, text encoder and pipeline wrap diffusers / transformers, which take seconds to import:
# load them on first use so `import starflow_torch` stays fast for training and sampling.
_LAZY = {
    "AutoencoderKL": ".vae",
    "AutoencoderKLWan": ".wan_vae",
    "TextEncoder": ".text",
    "StarFlowPipeline": ".pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AutoencoderKL",
    "AutoencoderKLWan",
    "FlowConfig",
    "SamplingStats",
    "StarFlow",
    "StarFlowPipeline",
    "TextEncoder",
]
