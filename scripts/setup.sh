#!/usr/bin/env bash
# Create .venv and install the package with the training extra, the torch twin and the dev tools.
# On Linux the CPU torch wheel is pinned first, so nothing pulls a multi-GB CUDA build.
# A system OpenBLAS (Debian: libopenblas0-pthread) makes MLX's CPU matmuls ~35x faster;
# it is installed when apt is available and we are root, and skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)" = "Linux" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null \
   && ! ldconfig -p 2>/dev/null | grep -q libopenblas; then
  (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null) \
    || echo "setup: could not install libopenblas0-pthread; MLX will use its slow reference BLAS"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
# cpu: MLX's CPU backend on Linux (a no-op on a Mac); train: mlx-data and pyyaml, which the
# tests need; generation alone needs neither (pip install starflow-mlx)
# (setuptools prints a boxed caution about flat layouts on every editable install; it is about
# folders named like the package in the working directory, which is this checkout itself)
PYTHONWARNINGS=ignore::UserWarning .venv/bin/python -m pip install -q -e ".[cpu,train,torch,dev,video]"
