#!/usr/bin/env bash
# Set up (idempotent) and run the main job: generation with the embedded demo model.
# The grid goes to outputs/ (ignored by git); a later run adds outputs/starflow-digits-demo_1.png
# and so on rather than replacing it. Extra arguments are passed on (--output, --overwrite, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m starflow_mlx.generate --output outputs/starflow-digits-demo.png "$@"
