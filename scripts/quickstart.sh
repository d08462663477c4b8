#!/usr/bin/env bash
# The main job: install, export a model, start a local Triton (cpu profile), rerank a sample.
# MODEL=BAAI/bge-reranker-v2-m3 (default, needs the Hugging Face hub), a local directory,
# or MODEL=test for the tiny test model built offline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh "export,serve,client"
exec .venv/bin/python -m reranker_serve.demo --model "${MODEL:-BAAI/bge-reranker-v2-m3}" "$@"
