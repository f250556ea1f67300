"""Imported first by every MLX command line (`python -m starflow_mlx.generate`, ...).

A command owns its process, so it switches MLX's matmuls to the system OpenBLAS on Linux
(`use_system_blas`, docs/blas.md) before anything imports mlx. Library code never imports
this module: the switch is process-wide and would change torch in the same process.
"""

from .blas import use_system_blas

use_system_blas(warn_if_late=False)
