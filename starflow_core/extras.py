"""Optional dependencies: what `pip install starflow-mlx` leaves out, and the error that says so.

Generation needs neither extra. Training (and encoding training data) needs the `train`
extra: mlx-data feeds the MLX trainer, pyyaml reads run files and `--set` values. The torch
twin is the `torch` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PACKAGE = "starflow-mlx"
# import name -> (the pip package, the extra that installs it)
OPTIONAL = {
    "yaml": ("pyyaml", "train"),
    "mlx.data": ("mlx-data", "train"),
    "torch": ("torch", "torch"),
    "av": ("av", "video"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the pip command."""


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` (a key of OPTIONAL), or raise MissingExtraError naming the install command."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        package, extra = OPTIONAL[module]
        raise MissingExtraError(
            f"{purpose} needs {package}, which is not installed: pip install '{PACKAGE}[{extra}]' "
            f"(or pip install {package})",
            name=module,
        ) from err
