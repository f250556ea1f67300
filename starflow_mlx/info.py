"""Print the generation parameters an image carries: `python -m starflow_mlx.info IMAGE [--json]`.

Framework-free (starflow_core.generation.info); this module gives it the twin's name.
"""

from __future__ import annotations

from . import command_setup  # noqa: F401  (first, as in every MLX command; this one never loads mlx)

# isort: split
import sys
from collections.abc import Sequence

from starflow_core.generation import info


def main(argv: Sequence[str] | None = None) -> int:
    return info.main(argv, module="starflow_mlx.info")


if __name__ == "__main__":
    sys.exit(main())
