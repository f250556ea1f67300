"""Print the generation parameters an image carries: `python -m starflow_torch.info IMAGE [--json]`.

Framework-free (starflow_core.generation.info); this module gives it the twin's name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from starflow_core.generation import info


def main(argv: Sequence[str] | None = None) -> int:
    return info.main(argv, module="starflow_torch.info")


if __name__ == "__main__":
    sys.exit(main())
