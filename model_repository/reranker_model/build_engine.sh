#!/bin/sh
# Builds the TensorRT engine of reranker_model on the GPU node that serves it.
# Run in NVIDIA's TensorRT image of the same release as the Triton image.
# Rendered by reranker-export; do not edit by hand.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ONNX_PATH=${ONNX_PATH:-$here/onnx/model.onnx}
ENGINE_PATH=${ENGINE_PATH:-$here/1/model.plan}
mkdir -p "$(dirname "$ENGINE_PATH")"
exec trtexec \
  --onnx="$ONNX_PATH" \
  --saveEngine="$ENGINE_PATH" \
  --stronglyTyped \
  --minShapes=input_ids:1x64,attention_mask:1x64 \
  --optShapes=input_ids:64x256,attention_mask:64x256 \
  --maxShapes=input_ids:128x512,attention_mask:128x512 \
  --memPoolSize=workspace:4096 \
  --builderOptimizationLevel=3 \
  --skipInference
