#!/usr/bin/env bash
# Creates .venv (once) and installs the project with the given extras, at the exact versions
# of requirements/lock.txt (every package, torch==2.13.0 included; scripts/lock.sh refreshes it).
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. scripts/bootstrap.sh dev   (the default)
#        scripts/bootstrap.sh export,serve,client
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-dev}
python=${PYTHON:-python3}
lock=requirements/lock.txt
if [[ "${extras}" == -h || "${extras}" == --help ]]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
# pip's own output: warnings and errors only, no progress bars.
pip=(.venv/bin/python -m pip --quiet --no-input)
install=("${pip[@]}" install --progress-bar off)

pin() { grep -E "^$1==" "$lock" | head -1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
echo "==> pip, setuptools and wheel from $lock"
"${install[@]}" "$(pin pip)" "$(pin setuptools)" "$(pin wheel)"
if [ "$extras" = dev ]; then
  # The whole lock is the dev environment: install it as it is.
  echo "==> installing the locked dev environment ($(grep -cE '^[a-z0-9]' "$lock") packages; the first time takes minutes)"
  "${install[@]}" -r "$lock"
  echo "==> installing triton-reranker (editable)"
  "${install[@]}" --no-deps --no-build-isolation -e .
  "${pip[@]}" check
else
  echo "==> installing triton-reranker[$extras] (editable) within $lock"
  "${install[@]}" --no-build-isolation -c "$lock" -e ".[$extras]"
fi
echo "==> .venv ready"
