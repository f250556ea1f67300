"""The OpenBLAS switch: explicit, never a side effect of importing the library, never raises,
warns with the fix, really speeds up MLX on Linux, and is on in every MLX command line."""

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
from helpers.waiting import HANG_GUARD_S

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
        assert blas.use_system_blas() is None
    assert "Accelerate" in blas.blas_status()["reason"]


def test_disabled_by_env(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("STARFLOW_NO_BLAS", "1")
    forbid_loading(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert blas.use_system_blas() is None
    assert "STARFLOW_NO_BLAS" in blas.blas_status()["reason"]


def test_too_late_after_mlx_core(fresh: pytest.MonkeyPatch) -> None:
    fresh.setitem(sys.modules, "mlx.core", object())
    forbid_loading(fresh)
    with pytest.warns(RuntimeWarning, match="call starflow_mlx.use_system_blas"):
        assert blas.use_system_blas() is None
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
        assert blas.use_system_blas() is None
    status = blas.blas_status()
    assert status["library"] is None and path in status["reason"]


def test_nothing_found_warns_with_install_hint(fresh: pytest.MonkeyPatch) -> None:
    fresh.setattr(blas, "candidate_paths", lambda: [])
    with pytest.warns(RuntimeWarning, match="apt-get install libopenblas0-pthread"):
        assert blas.use_system_blas() is None


def test_measure_rejects_unknown_framework() -> None:
    with pytest.raises(ValueError, match="framework"):
        blas.measure_gemm_gflops(8, framework="jax")


def run_python(code: str, env_extra: dict[str, str] | None = None) -> dict:
    """Run `code` in a new interpreter; return the JSON object it prints last."""
    env = {k: v for k, v in os.environ.items() if k not in ("STARFLOW_BLAS", "STARFLOW_NO_BLAS")}
    env.update(env_extra or {})
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_fresh(
    env_extra: dict[str, str], setup: str = "import starflow_mlx; starflow_mlx.use_system_blas()"
) -> dict:
    """`setup` in a new interpreter, then the BLAS status and an MLX matmul's result: its bytes'
    hash (each BLAS rounds in its own order, so the bits tell which library computed it) and its
    sum. Which BLAS computes, not how fast: speed is benchmarks/gemm.py's (docs/blas.md)."""
    code = (
        f"import json\n{setup}\n"
        "import hashlib\nimport mlx.core as mx, numpy as np\n"
        "from starflow_mlx.blas import blas_status\n"
        "rng = np.random.default_rng(0)\n"
        "a, w = (mx.array(rng.standard_normal(s, dtype=np.float32)) for s in ((257, 300), (300, 513)))\n"
        "out = np.array(a @ w)\n"
        "print(json.dumps({**blas_status(), 'hash': hashlib.sha256(out.tobytes()).hexdigest(),"
        " 'sum': float(out.astype(np.float64).sum())}))\n"
    )
    return run_python(code, env_extra)


def assert_computed_by_openblas(ran: dict, bundled: dict) -> None:
    assert ran["loaded"] and "openblas" in ran["library"], ran
    assert not bundled["loaded"]
    assert ran["hash"] != bundled["hash"], "the same bits: MLX's matmul did not go through OpenBLAS"
    # the same product within fp32 rounding: the sums of 131,841 entries of size ~17 (300 products
    # of unit normals) differ by 8e-5 (measured); 1e-2 is 100x that, another product thousands
    assert abs(ran["sum"] - bundled["sum"]) <= 1e-2, (ran, bundled)


needs_openblas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not blas.candidate_paths(),
    reason="the OpenBLAS switch is Linux only and needs OpenBLAS (apt-get install libopenblas0-pthread)",
)


@needs_openblas
def test_openblas_computes_mlx_matmuls() -> None:
    """(about 35x faster: benchmarks/gemm.py, docs/blas.md; a test asserts no speed)"""
    assert_computed_by_openblas(run_fresh({}), run_fresh({"STARFLOW_NO_BLAS": "1"}))


# The probe: linear layers at the row counts sampling and training use, hashed, and whether the
# system OpenBLAS is mapped into the process (what made torch's few-row products 2x slower:
# docs/blas.md; a test asserts the cause, not a speed).
TORCH_PROBE = """
import hashlib, json, os
import torch
from starflow_mlx.blas import candidate_paths
torch.manual_seed(0)
digest = hashlib.sha256()
for rows, n in ((4, 512), (64, 512), (257, 300), (512, 512)):
    a, w = torch.randn(rows, n), torch.randn(4 * n, n)
    digest.update(torch.nn.functional.linear(a, w).numpy().tobytes())
system = {os.path.realpath(path) for path in candidate_paths() if os.path.exists(path)}
mapped = {line.split()[-1] for line in open("/proc/self/maps") if line.split()[-1].startswith("/")}
print(json.dumps({"hash": digest.hexdigest(), "system_openblas": bool(system & mapped)}))
"""
USE_MLX = (
    "import starflow_mlx, mlx.core as mx\n"
    "from starflow_mlx import StarFlow, StarFlowPipeline\n"
    "mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))\n"
)


@needs_openblas
def test_importing_and_using_starflow_mlx_leaves_torch_unchanged() -> None:
    """Torch after `import starflow_mlx` and MLX work: bit-identical results, and the system
    OpenBLAS (whose global symbols slow torch down) is not even loaded."""
    alone, beside_mlx = run_python(TORCH_PROBE), run_python(USE_MLX + TORCH_PROBE)
    switched = run_python("import starflow_mlx; starflow_mlx.use_system_blas()\n" + TORCH_PROBE)
    assert beside_mlx["hash"] == alone["hash"]
    assert not alone["system_openblas"] and not beside_mlx["system_openblas"]
    # the probe can tell: the explicit switch does load it and change torch (why it is never implicit)
    assert switched["system_openblas"] and switched["hash"] != alone["hash"]


def mlx_command_modules() -> list[str]:
    """Modules of starflow_mlx that are command lines (they define main())."""
    package = REPO / "starflow_mlx"
    return sorted(
        path.stem
        for path in package.glob("*.py")
        if re.search(r"^def main\(", path.read_text(), flags=re.MULTILINE)
    )


def test_every_mlx_command_switches_blas_before_anything_else() -> None:
    """Each command's first import is command_setup, so mlx cannot load before the switch."""
    import ast

    commands = mlx_command_modules()
    assert {"generate", "train", "encode_dataset"} <= set(commands)
    for name in commands:
        tree = ast.parse((REPO / "starflow_mlx" / f"{name}.py").read_text())
        imports = [
            node
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", "") != "__future__"
        ]
        first = imports[0]
        names = [alias.name for alias in first.names]
        assert isinstance(first, ast.ImportFrom) and names == ["command_setup"], (name, ast.unparse(first))


@needs_openblas
@pytest.mark.parametrize("command", ["generate", "train"])
def test_mlx_commands_run_on_openblas(command: str) -> None:
    bundled = run_fresh({"STARFLOW_NO_BLAS": "1"}, setup="import starflow_mlx")
    assert_computed_by_openblas(run_fresh({}, setup=f"import starflow_mlx.{command}"), bundled)
