"""Deprecated: `python -m starflow_convert` is `python -m starflow_mlx.convert` (starflow-mlx-convert)."""

import sys

print(
    "note: python -m starflow_convert is deprecated; use starflow-mlx-convert or python -m starflow_mlx.convert",
    file=sys.stderr,
)

from starflow_mlx.convert import main  # noqa: E402  (after the note: importing it sets up MLX)

sys.exit(main())
