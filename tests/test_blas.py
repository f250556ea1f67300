"""The OpenBLAS loader: never raises, warns with the fix, and really speeds up MLX on Linux."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from starflow_mlx import blas

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A loader that has not run yet, on Linux, before mlx.core, with no env overrides."""
    monkeypatch.setattr(blas, "_status", None)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delitem(sys.modules, "mlx.core", raising=False)
    monkeypatch.delenv("STARFLOW_BLAS", raising=False)
    monkeypatch.delenv("STARFLOW_NO_BLAS", raising=False)
    return monkeypatch


def forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader must not open a library here")

    monkeypatch.setattr(ctypes, "CDLL", fail)


def test_noop_on_macos(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(sys, "platform", "darwin")
    forbid_loading(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert blas.load_system_blas() is None
    assert "Accelerate" in blas.blas_status()["reason"]


def test_disabled_by_env(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("STARFLOW_NO_BLAS", "1")
    forbid_loading(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert blas.load_system_blas() is None
    assert "STARFLOW_NO_BLAS" in blas.blas_status()["reason"]


def test_too_late_after_mlx_core(fresh: pytest.MonkeyPatch) -> None:
    fresh.setitem(sys.modules, "mlx.core", object())
    forbid_loading(fresh)
    with pytest.warns(RuntimeWarning, match="import starflow_mlx before mlx"):
        assert blas.load_system_blas() is None
    assert not blas.blas_status()["loaded"]


@pytest.mark.parametrize("kind", ["missing", "not_a_library", "not_a_blas"])
def test_bad_library_warns_and_returns_none(fresh: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        path = str(tmp_path / "libopenblas.so.0")
    elif kind == "not_a_library":
        path = str(tmp_path / "libopenblas.so.0")
        Path(path).write_text("not an ELF file")
    else:
        path = "libm.so.6"  # a real shared library without cblas_sgemm
    fresh.setenv("STARFLOW_BLAS", path)
    with pytest.warns(RuntimeWarning, match=re.escape(path)):
        assert blas.load_system_blas() is None
    status = blas.blas_status()
    assert status["library"] is None and path in status["reason"]


def test_nothing_found_warns_with_install_hint(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(blas, "candidate_paths", lambda: [])
    with pytest.warns(RuntimeWarning, match="apt-get install libopenblas0-pthread"):
        assert blas.load_system_blas() is None


def test_measure_rejects_unknown_framework() -> None:
    with pytest.raises(ValueError, match="framework"):
        blas.measure_gemm_gflops(8, framework="jax")


def run_fresh(env_extra: dict[str, str]) -> dict:
    """Import starflow_mlx in a new interpreter and time a 1024 matmul in MLX."""
    code = (
        "import json, starflow_mlx\n"
        "from starflow_mlx.blas import blas_status, measure_gemm_gflops\n"
        "print(json.dumps({**blas_status(), 'gflops': measure_gemm_gflops(1024, repeats=2)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("STARFLOW_BLAS", "STARFLOW_NO_BLAS")}
    env.update(env_extra)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenBLAS loader is Linux only")
def test_openblas_makes_mlx_matmul_faster() -> None:
    if not blas.candidate_paths():
        reason = "OpenBLAS not installed (apt-get install libopenblas0-pthread)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    with_openblas = run_fresh({})
    bundled = run_fresh({"STARFLOW_NO_BLAS": "1"})
    assert with_openblas["loaded"] and "openblas" in with_openblas["library"]
    assert not bundled["loaded"]
    # Measured ~35x on a shared 2-core VM; 3x leaves room for noisy neighbours.
    assert with_openblas["gflops"] > 3 * bundled["gflops"], (with_openblas, bundled)
