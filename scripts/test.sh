#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite on real Ray and a real MLflow server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export CTCAE_DATA_CACHE="${CTCAE_DATA_CACHE:-$PWD/.cache/data}"
.venv/bin/python -m pytest -q --durations=15 "$@"
