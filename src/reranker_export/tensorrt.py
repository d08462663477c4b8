"""The TensorRT engine-build command the GPU node runs (``trtexec`` in NVIDIA's TensorRT image).

Engines are tied to GPU architecture and TensorRT version, so they are built where they run,
never shipped. The export writes the command into ``reranker_model/build_engine.sh``.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .repository import ModelSignature
    from .settings import ServingSettings

ENGINE_FILENAME = "model.plan"
ONNX_SUBDIR = "onnx"  # reranker_model/onnx/model.onnx: outside the version dir Triton loads


def optimization_profile(settings: ServingSettings) -> dict[str, tuple[int, int]]:
    """(batch, sequence) for the min/opt/max shapes of the single optimization profile.

    min: one row of the shortest bucket; opt: a typical request (max_documents rows) at the
    middle bucket; max: a full dynamic batch at max_length.
    """
    buckets = settings.tokenizer.effective_length_buckets
    return {
        "min": (1, buckets[0]),
        "opt": (settings.tokenizer.max_documents, buckets[len(buckets) // 2]),
        "max": (settings.max_batch_size, settings.tokenizer.max_length),
    }


def _shapes(names: tuple[str, ...], shape: tuple[int, int]) -> str:
    return ",".join(f"{name}:{shape[0]}x{shape[1]}" for name in names)


def engine_build_command(
    settings: ServingSettings,
    signature: ModelSignature,
    *,
    onnx_path: str = "$ONNX_PATH",
    engine_path: str = "$ENGINE_PATH",
) -> list[str]:
    """``trtexec`` arguments: strongly typed, so the FP16 ONNX decides every layer's precision
    (LayerNormalization and Softmax stay FP32 as the export converted them)."""
    profile = optimization_profile(settings)
    return [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        "--stronglyTyped",
        f"--minShapes={_shapes(signature.input_names, profile['min'])}",
        f"--optShapes={_shapes(signature.input_names, profile['opt'])}",
        f"--maxShapes={_shapes(signature.input_names, profile['max'])}",
        "--memPoolSize=workspace:4096",
        "--builderOptimizationLevel=3",
        "--skipInference",
    ]


def build_engine_script(settings: ServingSettings, signature: ModelSignature) -> str:
    """A POSIX sh script, run from anywhere; ``ONNX_PATH``/``ENGINE_PATH`` override the defaults."""
    command = " \\\n  ".join(
        arg if arg.startswith(("--onnx=", "--saveEngine=")) else shlex.quote(arg)
        for arg in engine_build_command(settings, signature, onnx_path='"$ONNX_PATH"', engine_path='"$ENGINE_PATH"')
    )
    return f"""#!/bin/sh
# Builds the TensorRT engine of reranker_model on the GPU node that serves it.
# Run in NVIDIA's TensorRT image of the same release as the Triton image.
# Rendered by reranker-export; do not edit by hand.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ONNX_PATH=${{ONNX_PATH:-$here/{ONNX_SUBDIR}/model.onnx}}
ENGINE_PATH=${{ENGINE_PATH:-$here/1/{ENGINE_FILENAME}}}
mkdir -p "$(dirname "$ENGINE_PATH")"
exec {command}
"""
