"""STARFlow in MLX: arrays are NHWC (batch, height, width, channels)."""

# Before anything imports mlx: on Linux, point MLX at the system OpenBLAS (see blas.py).
from .blas import load_system_blas as _load_system_blas

_load_system_blas()

from starflow_convert.config import FlowConfig  # noqa: E402

from .model import StarFlow  # noqa: E402
from .sampling import SamplingStats  # noqa: E402
from .text import T5Tokenizer, TextEncoder  # noqa: E402
from .vae import AutoencoderKL  # noqa: E402

__all__ = ["AutoencoderKL", "FlowConfig", "SamplingStats", "StarFlow", "T5Tokenizer", "TextEncoder"]


from .pipeline import StarFlowPipeline  # noqa: E402

__all__ += ["StarFlowPipeline"]
