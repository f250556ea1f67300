"""starflow_core: the framework-free core shared by the MLX and PyTorch twins.

    config.py, presets.py   FlowConfig, the one model configuration, and named presets
    positions.py            RoPE angles (SPEC section 1), the same numbers for both twins
    frames.py               what video adds: denoiser mask, denoising chunks, sampling windows
    official/               the official format: .pth reader, key tables, shapes, arguments, conversion
    generation/             settings, noise, sizes, prompts, images, results, the generate command line
    sources/                where a model comes from: pipeline folders, the Hub, official releases
    training/               run files, schedule, checkpoint files, image folders, the train command line
    convert.py              the conversion command (python -m starflow_core.convert)
    validation.py           every structured file read, checked for shape (FileFormatError names the file)

It imports neither twin.
"""

from .config import FlowConfig
from .official.arguments import (
    OfficialVideoSettings,
    from_official_arguments,
    from_official_yaml,
    read_official_video_settings,
    resolve_config,
)
from .presets import PRESETS, preset
from .validation import FileFormatError

__all__ = [
    "FileFormatError",
    "FlowConfig",
    "PRESETS",
    "preset",
    "from_official_arguments",
    "from_official_yaml",
    "resolve_config",
    "OfficialVideoSettings",
    "read_official_video_settings",
]
