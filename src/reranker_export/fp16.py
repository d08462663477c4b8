"""FP32 ONNX -> FP16 ONNX, keeping overflow-prone ops in FP32 and the graph's I/O types unchanged."""

from __future__ import annotations

from pathlib import Path

from .errors import OnnxExportError
from .onnx_export import EXTERNAL_DATA_THRESHOLD_BYTES, external_data_name

# XLM-R overflows FP16 in normalisation statistics and softmax sums; these stay FP32.
# Casts around them are inserted by the converter.
FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Erf",
    "CumSum",
    "Range",
)


def convert_to_fp16(fp32_path: Path, fp16_path: Path) -> Path:
    """Write an FP16 copy of ``fp32_path``; inputs stay INT64 and ``logits`` stays FP32."""
    import onnx
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from .tensorrt_compat import tensorrt_safe_nodes

    try:
        model = onnx.load(str(fp32_path), load_external_data=True)
        # Shape inference runs on the in-memory proto, which protobuf caps at 2 GiB.
        large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS)),
            # The Casts around an integer CumSum: FP16 would lose position ids past 2048.
            node_block_list=list(tensorrt_safe_nodes(model)),
            disable_shape_infer=large,
        )
        del model
        fp16_path.parent.mkdir(parents=True, exist_ok=True)
        external = converted.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
        onnx.save_model(
            converted,
            str(fp16_path),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=external_data_name(fp16_path),
        )
    except Exception as exc:
        raise OnnxExportError(f"FP16 conversion of {fp32_path.name} failed: {exc}") from exc
    return fp16_path
