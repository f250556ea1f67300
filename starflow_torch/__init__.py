"""STARFlow in PyTorch: tensors are NCHW (batch, channels, height, width).

The twin of starflow_mlx, with the same module names, classes and weight names,
for multi-GPU training and CUDA sampling.
"""

from starflow_core.config import FlowConfig

# torch, and diffusers / transformers behind the VAE, text encoder and pipeline, take seconds to
# import: everything is loaded on first use, so a command's --help (and argument errors) answer
# before any of them loads.
_LAZY = {
    "StarFlow": ".model",
    "SamplingStats": ".sampling",
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
