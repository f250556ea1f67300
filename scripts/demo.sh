#!/usr/bin/env bash
# Set up (idempotent) and run the main job: generation with the embedded demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m starflow_mlx.generate "$@"
