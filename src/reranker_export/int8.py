"""The cpu profile's optimised graphs: onnxruntime's transformer fusion, then dynamic INT8 weights.

Fusion (``onnxruntime.transformers.optimizer``, BERT patterns, which XLM-R shares) rewrites what it
recognises in the exported graph into single CPU kernels. On the torch dynamo export it finds
SkipLayerNormalization (residual add + LayerNorm) and BiasGelu; the attention block, whose mask
arithmetic the dynamo exporter writes differently from the TorchScript pattern the fuser expects,
stays unfused. The report of what fused goes into the manifest.

INT8 is onnxruntime's dynamic quantization of the fused graph: the weights of every MatMul whose
second input is a weight (the encoder's linear layers) become INT8 per tensor; activations are
quantized at run time, row by row of each batch. Embeddings (Gather), LayerNorm, softmax, GELU
and the classification head stay FP32: the head runs as Gemm on the [rows, hidden] first-token
vector, and Gemm is not quantized, so the logit is computed in FP32 from INT8-computed features.
Activation x activation MatMuls (attention scores) stay FP32 too (``MatMulConstBOnly``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import OnnxExportError
from .onnx_export import EXTERNAL_DATA_THRESHOLD_BYTES

FUSION_MODEL_TYPE = "bert"
QUANTIZED_OPS = ("MatMul",)


@contextlib.contextmanager
def _quiet(name: str | None) -> Iterator[None]:
    """Raise a logger to ERROR for the duration: the optimizer and the quantizer log advice on every run."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _large(path: Path) -> bool:
    sidecar = path.with_name(path.name + ".data")
    size = path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)
    return size > EXTERNAL_DATA_THRESHOLD_BYTES


def fuse_graph(source: Path, target: Path, *, config: Mapping[str, Any]) -> dict[str, int]:
    """Write the fused graph of ``source`` to ``target``; returns the fused operators by type (count > 0)."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet("onnxruntime.transformers"), _quiet(None):
            optimized = optimize_model(
                str(source),
                model_type=FUSION_MODEL_TYPE,
                num_heads=int(config.get("num_attention_heads", 0)),
                hidden_size=int(config.get("hidden_size", 0)),
                opt_level=0,  # graph fusions only; onnxruntime's own passes run again at session start
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        optimized.save_model_to_file(str(target), use_external_data_format=_large(source), all_tensors_to_one_file=True)
        stats = optimized.get_fused_operator_statistics()
    except Exception as exc:
        raise OnnxExportError(f"fusing {source.name} with onnxruntime's transformer optimizer failed: {exc}") from exc
    return {op: int(count) for op, count in stats.items() if count}


def quantize_int8(fused: Path, target: Path) -> Path:
    """Dynamic INT8 (QInt8, per tensor) of the weight MatMuls of ``fused``, written to ``target``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The head: Gemm on the [rows, hidden] first-token vector. The quantizer rewrites each Gemm as
    # MatMul + Add (named <gemm>_MatMul) before quantizing, so both names are kept out.
    head = [n.name for n in onnx.load(str(fused), load_external_data=False).graph.node if n.op_type == "Gemm"]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _quiet(None):  # the root logger's "consider pre-processing" hint
            quantize_dynamic(
                fused,
                target,
                op_types_to_quantize=list(QUANTIZED_OPS),
                weight_type=QuantType.QInt8,
                use_external_data_format=_large(fused),
                nodes_to_exclude=[*head, *(f"{name}_MatMul" for name in head)],
                extra_options={"MatMulConstBOnly": True},
            )
    except Exception as exc:
        raise OnnxExportError(f"INT8 quantization of {fused.name} failed: {exc}") from exc
    return target
