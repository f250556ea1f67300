#!/usr/bin/env bash
# Set up (idempotent) and run the linter, the whole test suite and the wheel check (what CI runs).
# With arguments, they go to pytest (e.g. tests/test_cli.py -k demo) and the wheel check is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
  # the package as users install it: built wheel, fresh venv, console scripts and the main job
  .venv/bin/python scripts/check_wheel.py
fi
