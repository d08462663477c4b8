"""The TensorRT operator check (``reranker_export.tensorrt_compat``), on CPU, without TensorRT.

Hand-built graphs show what the check refuses and that the CumSum rewrite computes the same
numbers, FP16 conversion included; the exported test models pass it (tests/test_export.py), and
so does the full-size architecture (tests/scripts/export_full_size.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from reranker_export.errors import TensorRTCompatibilityError
from reranker_export.fp16 import convert_to_fp16
from reranker_export.tensorrt_compat import (
    SUPPORTED_TYPES,
    check_tensorrt_compatible,
    find_incompatibilities,
    make_tensorrt_safe,
)


def _position_ids_graph() -> onnx.ModelProto:
    """XLM-R's position ids: cumsum over the INT64 mask, times the mask, plus the padding index."""
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"])
    ids = helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])
    scale = helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", "sequence"])
    nodes = [
        helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("axis", TensorProto.INT64, [], [1])),
        helper.make_node("CumSum", ["mask", "axis"], ["summed"], name="position_cumsum"),
        helper.make_node("Mul", ["summed", "mask"], ["masked"], name="mask_positions"),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [], [1])),
        helper.make_node("Add", ["masked", "one"], ["position_ids"], name="add_padding_index"),
        # A float branch, so the FP16 conversion has something to convert.
        helper.make_node("Constant", [], ["half"], value=helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])),
        helper.make_node("Mul", ["x", "half"], ["scaled"], name="scale"),
    ]
    graph = helper.make_graph(nodes, "positions", [mask, x], [ids, scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto | Path, mask: np.ndarray) -> list[np.ndarray]:
    source = model if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(
        str(source) if isinstance(source, Path) else source, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"mask": mask, "x": mask.astype(np.float32)})


def test_integer_cumsum_is_refused_then_rewritten_to_the_same_numbers(tmp_path: Path) -> None:
    model = _position_ids_graph()
    (problem,) = find_incompatibilities(model)
    assert problem.op_type == "CumSum" and "input 0 is INT64" in problem.reason
    # Long rows (past FP16's exact integers, 2048) and padding: every position id must stay exact.
    mask = np.ones((2, 5000), dtype=np.int64)
    mask[1, 4000:] = 0
    expected = _run(model, mask)

    assert make_tensorrt_safe(model) == 1
    assert find_incompatibilities(model) == []
    onnx.checker.check_model(model)
    for got, want in zip(_run(model, mask), expected, strict=True):
        np.testing.assert_array_equal(got, want)

    fp32_path = tmp_path / "fp32.onnx"
    onnx.save(model, str(fp32_path))
    fp16_path = convert_to_fp16(fp32_path, tmp_path / "fp16.onnx")
    check_tensorrt_compatible(fp16_path)
    position_ids, _ = _run(fp16_path, mask)
    np.testing.assert_array_equal(position_ids, expected[0])  # the Casts around CumSum stayed FP32


def test_unsupported_ops_types_and_non_constant_inputs_are_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [2, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="dynamic_axes"),  # axes is an input
        helper.make_node("Not", ["flag"], ["negated"], name="ok_not"),
        helper.make_node("Cast", ["negated"], ["as_float"], name="ok_cast", to=TensorProto.FLOAT),
        helper.make_node("Erf", ["flag"], ["erf_of_bool"], name="bool_erf"),  # Erf takes floats only
        helper.make_node("StringNormalizer", ["s"], ["t"], name="strings"),  # not in the parser at all
        helper.make_node("MyOp", ["x"], ["out"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "bad", [x, axes, flag], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    problems = {p.node: p.reason for p in find_incompatibilities(model)}
    assert set(problems) == {"dynamic_axes", "bool_erf", "strings", "custom"}
    assert "input 1 must be a constant" in problems["dynamic_axes"]
    assert "input 0 is BOOL" in problems["bool_erf"]
    assert "not supported" in problems["strings"] and "plugin" in problems["custom"]

    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TensorRTCompatibilityError, match="would refuse 4 node"):
        check_tensorrt_compatible(path)


def test_opset_outside_the_parsers_range_is_refused() -> None:
    model = _position_ids_graph()
    make_tensorrt_safe(model)
    model.opset_import[0].version = 21
    (problem,) = find_incompatibilities(model)
    assert problem.op_type == "opset" and "21" in problem.reason


def test_table_covers_what_a_cross_encoder_graph_uses() -> None:
    # Ops the exported XLM-R and BERT graphs contain (see test_export.py for the real graphs).
    for op in ("MatMul", "Gemm", "LayerNormalization", "Softmax", "Erf", "Gather", "Where", "CumSum", "Cast"):
        assert op in SUPPORTED_TYPES, op
    assert "INT64" not in SUPPORTED_TYPES["CumSum"] and "INT64" in SUPPORTED_TYPES["Gather"]
