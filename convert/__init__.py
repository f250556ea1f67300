"""starflow_convert: the framework-free layer shared by both twins.

The model configuration (`FlowConfig`), the checkpoint key tables, and the
conversions that keep weights interchangeable between the official `.pth`
checkpoints, our safetensors folders, and the MLX / PyTorch twins.
"""

from .config import PRESETS, FlowConfig, from_official_arguments, from_official_yaml, preset

__all__ = ["FlowConfig", "PRESETS", "preset", "from_official_arguments", "from_official_yaml"]
