"""Deprecated: `starflow_convert` (version 0.1.0) is now `starflow_core`; this name stays for old scripts.

`python -m starflow_convert ...` runs `python -m starflow_mlx.convert ...` (installed as
starflow-convert) with a note; `from starflow_convert import FlowConfig` still works.
"""

from starflow_core import (
    PRESETS,
    FlowConfig,
    from_official_arguments,
    from_official_yaml,
    preset,
    resolve_config,
)

__all__ = [
    "FlowConfig",
    "PRESETS",
    "preset",
    "from_official_arguments",
    "from_official_yaml",
    "resolve_config",
]
