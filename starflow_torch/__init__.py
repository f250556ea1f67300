"""STARFlow in PyTorch: tensors are NCHW (batch, channels, height, width).

The twin of starflow_mlx, with the same module names, classes and weight names,
for multi-GPU training and CUDA sampling.
"""

from starflow_convert.config import FlowConfig

from .model import StarFlow
from .sampling import SamplingStats
from .text import TextEncoder
from .vae import AutoencoderKL

__all__ = ["AutoencoderKL", "FlowConfig", "SamplingStats", "StarFlow", "TextEncoder"]
