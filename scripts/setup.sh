#!/usr/bin/env bash
# Creates .venv and installs the project with the search layer and test tools.
# torch 2.13.0 first: on these machines it is a local CPU wheel; a bare "torch" would pull CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Debian's chromium and its chromedriver for the MLflow UI test (tests/test_mlflow_ui.py), as root
# only; without them that test skips and says why. CTCAE_NO_BROWSER=1 leaves them out.
if [ "${CTCAE_NO_BROWSER:-0}" != 1 ] && ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }) \
    || echo "setup: chromium / chromium-driver not installed; tests/test_mlflow_ui.py will skip"
fi
# A C compiler for the layer's fused CPU kernels (ctcae_core/fused.py, built on first use); without
# one the layer runs its slower ATen path and says so.
if ! command -v cc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev >/dev/null; }) \
    || echo "setup: gcc not installed; the layer will run its slower ATen path"
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
# The same pins as the cluster image (k8s/constraints.txt, frozen from the tested environment), so
# that what CI tests is what the image runs.
.venv/bin/pip install -q -c k8s/constraints.txt -e ".[search,test]"
.venv/bin/python -c "import torch, ray, mlflow, optuna, ctcae_core; print('setup ok: torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
.venv/bin/python -c "from ctcae_core import fused; print('fused CPU kernels:', 'built' if fused.library() else 'not built (the ATen path runs)')"
