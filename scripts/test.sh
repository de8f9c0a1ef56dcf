#!/usr/bin/env bash
# Runs the test suite on real Ray and a real MLflow server.
#   bash scripts/test.sh          sets up (scripts/setup.sh), then runs every test (CI: .ci/run)
#   bash scripts/test.sh --fast   leaves out the tests marked slow (they start Ray or an MLflow
#                                 server, or train for more than a few seconds); sets up only
#                                 when .venv cannot import the project yet
# Any other argument goes to pytest (e.g. tests/test_space.py, -k grid).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
args=()
for a in "$@"; do
    if [ "$a" = "--fast" ]; then fast=1; else args+=("$a"); fi
done
if [ "$fast" = 0 ] || ! .venv/bin/python -c "import ctcae_core, search" 2>/dev/null; then
    bash scripts/setup.sh
fi
[ "$fast" = 1 ] && args=(-m "not slow" ${args[@]+"${args[@]}"})
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export CTCAE_DATA_CACHE="${CTCAE_DATA_CACHE:-$PWD/.cache/data}"
.venv/bin/python -m pytest -q --durations=15 ${args[@]+"${args[@]}"}
