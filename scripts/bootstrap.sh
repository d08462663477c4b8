#!/usr/bin/env bash
# Creates .venv (once) and installs the project with the given extras.
# Usage: scripts/bootstrap.sh EXTRAS   e.g. scripts/bootstrap.sh dev
# torch is pinned to 2.13.0 first: that pin resolves to a CPU build where one is provided,
# and the extras that need torch then reuse it instead of pulling CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-dev}
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null && [[ "$extras" == *dev* || "$extras" == *export* ]]; then
  echo "==> installing torch==2.13.0"
  .venv/bin/pip install --quiet "torch==2.13.0"
fi
echo "==> installing triton-reranker[$extras]"
.venv/bin/pip install --quiet -e ".[$extras]"
