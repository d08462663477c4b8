#!/usr/bin/env bash
# The main job: install, export a model, start a local Triton (cpu profile), rerank a sample.
# MODEL=BAAI/bge-reranker-v2-m3 (default, needs the Hugging Face hub), a local directory,
# or MODEL=test for the tiny test model built offline. Extra arguments go to reranker-demo
# (reranker-demo --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
scripts/bootstrap.sh demo
exec .venv/bin/reranker-demo --model "${MODEL:-BAAI/bge-reranker-v2-m3}" "$@"
