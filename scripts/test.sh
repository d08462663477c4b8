#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then lint, types and tests.
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev

# kubectl (with kustomize) renders the Kubernetes overlays; checkov scans them. Both are
# installed here when possible; without them those tests skip and say why.
if ! command -v kubectl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing kubectl (Debian package)"
  (apt-get update -qq && apt-get install -y -qq kubectl >/dev/null) || echo "    kubectl could not be installed; the k8s rendering tests will skip"
fi
if [ ! -x .venv-checkov/bin/checkov ]; then
  echo "==> installing checkov into .venv-checkov (its pins conflict with the project's)"
  (python3 -m venv .venv-checkov && .venv-checkov/bin/pip install --quiet "checkov==3.3.30") \
    || echo "    checkov could not be installed; the scan test will skip"
fi

echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest "$@"
