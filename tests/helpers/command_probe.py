"""Run command lines' `main` in this process and report what a user would see, as JSON.

    python -m tests.helpers.command_probe '[["starflow_mlx.generate", ["--version"]], ...]'

prints one JSON list of {"code", "stdout", "stderr"}, one per command line. A subprocess of
its own per twin: the MLX commands switch BLAS process-wide (docs/blas.md), and only argument
parsing and early refusals run here, nothing that computes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys


def run(module: str, argv: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [f"{module.replace('.', '/')}.py", *argv]  # as `python -m module` sets it
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = importlib.import_module(module).main(argv)
            except SystemExit as exit_:  # argparse: --help, --version (0), usage errors (2)
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # noqa: BLE001 - reported as a traceback, as a user would see it
                import traceback

                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = saved_argv
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    print(json.dumps([run(module, argv) for module, argv in json.loads(sys.argv[1])]))
