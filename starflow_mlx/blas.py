"""Use the system OpenBLAS for MLX on Linux: an explicit, process-wide switch.

The ``mlx[cpu]`` Linux wheel links a bundled reference (netlib) BLAS and LAPACK that run a
2048x2048 fp32 matmul at about 5 GFLOP/s, against about 200 GFLOP/s for OpenBLAS on the
same two cores (see docs/blas.md). ``libmlx.so`` binds ``cblas_sgemm`` and the LAPACK
routines (``sgetrf_``, ``ssyevd_``, ...) when it is loaded, and the dynamic linker searches
the process's global scope first, so a ``libopenblas.so.0`` opened with ``RTLD_GLOBAL``
*before* ``mlx.core`` is imported provides every one of those symbols. Loading it after
``mlx.core`` has no effect.

The switch is process-wide: every library loaded later that resolves BLAS symbols through
the global scope gets OpenBLAS too. PyTorch does (its results change bit for bit and its
CPU matmuls slow down several times), so importing starflow_mlx never does this. The MLX
command lines call ``use_system_blas()`` first thing (they own their process); library
users call it themselves, before anything imports mlx. This module must not import mlx.

Environment variables:
    STARFLOW_BLAS=/path/to/libopenblas.so.0   load this library instead of searching
    STARFLOW_NO_BLAS=1                        keep MLX's bundled BLAS
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import sysconfig
import time
import warnings
from typing import Any

_INSTALL_HINT = (
    "install OpenBLAS (Debian/Ubuntu: apt-get install libopenblas0-pthread; Fedora: dnf install "
    "openblas) or set STARFLOW_BLAS=/path/to/libopenblas.so.0; set STARFLOW_NO_BLAS=1 to silence"
)

# What use_system_blas() did in this process; the first call decides, later calls reuse it.
_status: dict[str, Any] | None = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def candidate_paths() -> list[str]:
    """OpenBLAS locations to try, most specific first; only existing files, plus the linker's pick.

    Only OpenBLAS names are listed: ``libblas.so.3`` may be the slow reference BLAS.
    """
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    debian = f"/usr/lib/{multiarch}"
    paths = [
        f"{debian}/libopenblas.so.0",  # Debian/Ubuntu update-alternatives symlink
        f"{debian}/openblas-pthread/libopenblas.so.0",
        f"{debian}/openblas-openmp/libopenblas.so.0",
        f"{debian}/openblas-serial/libopenblas.so.0",
        "/usr/lib64/libopenblasp.so.0",  # Fedora, pthreads build
        "/usr/lib64/libopenblas.so.0",  # Fedora, serial build
        "/usr/lib64/libopenblaso.so.0",  # Fedora, OpenMP build
        "/usr/local/lib/libopenblas.so.0",  # built from source
        os.path.join(sys.prefix, "lib", "libopenblas.so.0"),  # conda environment
    ]
    found = [path for path in paths if os.path.isfile(path)]
    soname = ctypes.util.find_library("openblas")
    if soname and not found:
        found.append(soname)
    return list(dict.fromkeys(found))


def _try_load(path: str) -> str | None:
    """Open ``path`` globally; return None on success or the reason it cannot serve MLX."""
    try:
        library = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as error:
        return f"cannot load {path}: {error}"
    if not hasattr(library, "cblas_sgemm"):
        return f"{path} does not export cblas_sgemm, so it is not a CBLAS library MLX can use"
    return None


def _record(library: str | None, loaded: bool, reason: str) -> dict[str, Any]:
    return {"library": library, "loaded": loaded, "reason": reason, "platform": sys.platform}


def _finish(library: str | None, loaded: bool, reason: str, warn: bool = False) -> str | None:
    global _status
    _status = _record(library, loaded, reason)
    if warn:
        warnings.warn(f"starflow_mlx: {reason}", RuntimeWarning, stacklevel=3)
    return library if loaded else None


def use_system_blas(warn_if_late: bool = True) -> str | None:
    """Make MLX use the system OpenBLAS; return the loaded library's path, or None.

    Linux only and only before ``mlx.core`` is imported (later it has no effect: a
    RuntimeWarning unless ``warn_if_late`` is False). Process-wide: torch in the same
    process also switches to OpenBLAS (different rounding, slower), so call it only in a
    process that runs MLX. Never raises: a missing or broken library gives a RuntimeWarning
    naming the fix and MLX keeps its bundled BLAS.
    """
    if _status is not None:
        return _status["library"] if _status["loaded"] else None
    if not sys.platform.startswith("linux"):
        return _finish(None, False, f"not needed on {sys.platform} (MLX uses Accelerate on macOS)")
    if _flag("STARFLOW_NO_BLAS"):
        return _finish(None, False, "disabled by STARFLOW_NO_BLAS; MLX uses its bundled BLAS")
    if "mlx.core" in sys.modules:
        return _finish(
            None,
            False,
            "mlx.core was imported before use_system_blas(), too late to switch MLX to OpenBLAS "
            "(matmuls run ~35x slower); call starflow_mlx.use_system_blas() before importing mlx",
            warn=warn_if_late,
        )

    explicit = os.environ.get("STARFLOW_BLAS", "").strip()
    paths = [explicit] if explicit else candidate_paths()
    errors = []
    for path in paths:
        error = _try_load(path)
        if error is None:
            source = "STARFLOW_BLAS" if explicit else "search"
            return _finish(path, True, f"loaded {path} (from {source}) before mlx.core")
        errors.append(error)
    problem = "; ".join(errors) if errors else "no OpenBLAS found"
    return _finish(
        None, False, f"{problem}. MLX keeps its bundled BLAS (~35x slower matmul); {_INSTALL_HINT}", warn=True
    )


def blas_status() -> dict[str, Any]:
    """Which BLAS MLX got and why: keys ``library``, ``loaded``, ``reason``, ``platform``."""
    return (
        dict(_status)
        if _status is not None
        else _record(None, False, "use_system_blas() not called: MLX uses its bundled BLAS")
    )


def measure_gemm_gflops(n: int = 1024, repeats: int = 5, framework: str = "mlx") -> float:
    """Best-of-``repeats`` fp32 ``(n, n) @ (n, n)`` speed in GFLOP/s, after one warm-up.

    The roofline for the benchmark: ``framework`` is "mlx" (default device) or "numpy".
    Counts 2 n^3 flops per product. (torch is timed in a process of its own: see
    starflow_torch.bench.)
    """
    if framework == "mlx":
        import mlx.core as mx

        a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
        mx.eval(a, b)
        run = lambda: mx.eval(a @ b)
    elif framework == "numpy":
        import numpy as np

        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
        run = lambda: a @ b
    else:
        raise ValueError(f"framework must be 'mlx' or 'numpy', got {framework!r}")

    run()
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
