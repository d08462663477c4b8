#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs at pinned versions, then
# lint, types and tests.
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
scripts/bootstrap.sh dev

# kubectl (with kustomize) renders the Kubernetes overlays: a pinned download, not whatever the
# machine has. checkov scans them from its own locked environment (its pins conflict with ours).
KUBECTL=$(scripts/install-kubectl.sh)
export KUBECTL
if [ ! -x .venv-checkov/bin/checkov ]; then
  echo "==> installing checkov into .venv-checkov from requirements/checkov.txt"
  rm -rf .venv-checkov
  python3 -m venv .venv-checkov
  .venv-checkov/bin/python -m pip install --quiet --progress-bar off -r requirements/checkov.txt
fi
export CHECKOV=$PWD/.venv-checkov/bin/checkov

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
