#!/usr/bin/env bash
# The GPU check in one command, from the repository root of a plain copy of the working tree
# (the project need not be installed): export bge-reranker-v2-m3's full-size architecture
# (random weights) to ONNX FP32 and FP16, check FP16 against FP32 on the GPU, and measure
# serving latency and throughput through the Triton ensemble (or in-process when Triton
# cannot run), writing gpu-check.json and gpu-check.md into the results folder.
#
# Usage: scripts/gpu-check.sh [OUTPUT_DIR] [--dry-run] [OPTIONS]
#   OUTPUT_DIR  results folder (default: $OUT if set, else ./gpu-check-results)
#   --dry-run   the same stages on the CPU with a tiny architecture, in seconds (no GPU needed)
#   OPTIONS     passed to `python -m reranker_bench.gpu_check` (listed below)
#
# Wheels in .whl/ (nvidia-pytriton, tritonclient, grpcio, ...: see docs/benchmarks.md, "GPU check")
# are installed first with pip --no-index --no-deps into $GPU_CHECK_SITE (default /tmp/site).
# Python: $PYTHON, else .venv/bin/python when present, else python3.
# Exit codes: 0 every stage passed, 1 a stage failed (the report says which), 2 usage error or
# no CUDA GPU (without --dry-run), 130 interrupted.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  python=.venv/bin/python
else
  python=python3
fi

for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    echo
    PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$python" -m reranker_bench.gpu_check --help 2>/dev/null \
      || echo "(the options need $python with the project's dependencies)"
    exit 0
  fi
done

site=${GPU_CHECK_SITE:-/tmp/site}
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if (( ${#wheels[@]} )); then
  echo "==> installing ${#wheels[@]} carried wheels into $site" >&2
  "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$python" -m reranker_bench.gpu_check "$@"
