#!/usr/bin/env bash
# Create .venv and install the package with the training extra, the torch twin and the dev tools.
# torch is installed first: on Linux without an NVIDIA GPU from PyTorch's CPU index when it
# answers (PyPI's Linux wheel is the CUDA build), else from the default index; a Mac gets the
# plain wheel (the choice: scripts/torch_wheel.py).
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
read -r -a torch_index <<< "$(python3 scripts/torch_wheel.py)"
if [ "${#torch_index[@]}" -gt 0 ]; then
  .venv/bin/python -m pip install -q "${torch_index[@]}" "torch==2.13.0" \
    || { echo "setup: the CPU index failed; torch comes from the default index"; \
         .venv/bin/python -m pip install -q "torch==2.13.0"; }
else
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
# cpu: MLX's CPU backend on Linux (a no-op on a Mac); train: mlx-data and pyyaml, which the
# tests need; generation alone needs neither (pip install starflow-mlx)
# (setuptools prints a boxed caution about flat layouts on every editable install; it is about
# folders named like the package in the working directory, which is this checkout itself)
PYTHONWARNINGS=ignore::UserWarning .venv/bin/python -m pip install -q -e ".[cpu,train,torch,dev,video]"
