"""STARFlow in MLX: arrays are NHWC (batch, height, width, channels)."""

# Before anything imports mlx: on Linux, point MLX at the system OpenBLAS (see blas.py).
from .blas import load_system_blas as _load_system_blas

_load_system_blas()
