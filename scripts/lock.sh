#!/usr/bin/env bash
# Refreshes the locks from their inputs with pip-tools' pip-compile (from the dev environment):
#   requirements/lock.txt     <- pyproject.toml (every extra, build deps) + requirements/constraints.in
#   requirements/checkov.txt  <- requirements/checkov.in
# Usage: scripts/lock.sh              keep existing pins, add or fix what pyproject.toml changed
#        scripts/lock.sh --upgrade    move every package to the newest version the ranges allow
# Run it on a machine that serves torch's CPU build for `torch==2.13.0` (these machines do; on
# plain PyPI the CUDA build and its nvidia-* packages would enter the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
scripts/bootstrap.sh dev
compile=(.venv/bin/pip-compile --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links "$@")
echo "==> requirements/lock.txt"
"${compile[@]}" --extra=dev --all-build-deps --constraint=requirements/constraints.in \
  --output-file=requirements/lock.txt pyproject.toml
# Two fixes pip-compile has no option for: a local build's label (2.13.0+cpu) is not on PyPI,
# so the lock names the release itself; and the project's own entry (its extras name each
# other) is this checkout's path, which the lock must not carry.
sed -i -E 's/^(torch==[0-9.]+)\+[a-z0-9.]+$/\1/' requirements/lock.txt
awk '/^triton-reranker @ /{skip=1; next} skip && /^ /{next} {skip=0; print}' requirements/lock.txt >requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "==> requirements/checkov.txt"
"${compile[@]}" --output-file=requirements/checkov.txt requirements/checkov.in
echo "==> done: review with git diff requirements/, then run scripts/test.sh"
