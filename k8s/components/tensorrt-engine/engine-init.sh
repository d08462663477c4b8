#!/bin/sh
# Init container of the gpu-tensorrt overlay; runs in NVIDIA's TensorRT image of the same
# release as the Triton image. TensorRT engines are tied to the GPU model and the TensorRT
# version, so the engine is built on the node, by the command the export wrote
# (<model>/build_engine.sh), into a cache keyed by
#   <GPU name>-sm<compute capability>/trt-<TensorRT version>/<digest of ONNX + build script>
# A matching engine in the cache is reused (no build). The engine is then linked into
# the directory Triton mounts as <model>/1, so Triton loads <model>/1/model.plan.
set -eu

MODEL_REPOSITORY=${MODEL_REPOSITORY:-/models/repository}
CORE_MODEL=${CORE_MODEL:-reranker_model}
ENGINE_CACHE=${ENGINE_CACHE:-/engine-cache}
ENGINE_LINK_DIR=${ENGINE_LINK_DIR:-/engine}
ENGINE_FILENAME=${ENGINE_FILENAME:-model.plan}
# Where NVIDIA images and the container toolkit put trtexec and nvidia-smi (appended: a
# PATH set by the caller wins).
PATH=$PATH:/opt/tensorrt/bin:/usr/src/tensorrt/bin:/usr/local/nvidia/bin
export PATH

log() { printf 'engine-init: %s\n' "$*" >&2; }
fail() { log "error: $*"; exit 1; }

# A string made safe as one path component.
slug() { printf '%s' "$1" | tr -cs 'A-Za-z0-9._-' '-' | sed -e 's/^-*//' -e 's/-*$//'; }

tensorrt_version() {
  # An explicit override, then the version NVIDIA's image declares, then the Python
  # bindings, then trtexec's banner ("[TensorRT v100800]").
  version=${TENSORRT_VERSION:-${TRT_VERSION:-}}
  if [ -z "$version" ]; then
    version=$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)
  fi
  if [ -z "$version" ]; then
    version=$( (trtexec --help 2>&1 || true) | sed -n 's/.*TensorRT v\([0-9][0-9]*\).*/\1/p' | head -n 1)
  fi
  printf '%s' "$version"
}

model_dir=$MODEL_REPOSITORY/$CORE_MODEL
script=$model_dir/build_engine.sh
[ -f "$script" ] || fail "$script not found: write the repository with 'reranker-export --profile tensorrt'"
[ -d "$model_dir/onnx" ] || fail "$model_dir/onnx not found: the export of the tensorrt profile puts the ONNX there"
[ -d "$ENGINE_LINK_DIR" ] || fail "$ENGINE_LINK_DIR (the volume Triton mounts as $CORE_MODEL/1) is not mounted"

gpu=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -n 1) || true
[ -n "$gpu" ] || fail "nvidia-smi reports no GPU: the init container needs an nvidia.com/gpu limit"
gpu_name=${gpu%%,*}
compute_capability=${gpu##*,}
gpu_key=$(slug "$gpu_name")-sm$(slug "$compute_capability")

trt=$(slug "$(tensorrt_version)")
[ -n "$trt" ] || fail "cannot tell the TensorRT version (set TENSORRT_VERSION)"

# Content digest: a re-exported model (or a changed build command) gets a new engine.
digest=$(cd "$model_dir" && find build_engine.sh onnx -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c 1-16)

engine_dir=$ENGINE_CACHE/$gpu_key/trt-$trt/$digest
engine=$engine_dir/$ENGINE_FILENAME
if [ -s "$engine" ]; then
  log "reusing $engine"
else
  mkdir -p "$engine_dir"
  # Built under a private name, then renamed: a concurrent pod never sees half an engine.
  partial=$engine.partial.${HOSTNAME:-pod}.$$
  trap 'rm -f "$partial"' EXIT
  log "building $engine with $script (takes minutes)"
  ENGINE_PATH=$partial sh "$script" || fail "engine build failed ($script)"
  [ -s "$partial" ] || fail "$script wrote no engine to ENGINE_PATH"
  mv -f "$partial" "$engine"
  trap - EXIT
  log "built $engine"
fi
ln -sfn "$engine" "$ENGINE_LINK_DIR/$ENGINE_FILENAME"
log "$ENGINE_LINK_DIR/$ENGINE_FILENAME -> $engine"
