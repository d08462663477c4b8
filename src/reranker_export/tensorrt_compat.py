"""Can TensorRT build an engine from this ONNX graph? A check on CPU, without TensorRT.

The ``tensorrt`` profile builds its engine on the GPU node (``build_engine.sh``, trtexec), long after
the export; a graph TensorRT's ONNX parser rejects would only fail there. So the export checks every
node against the parser's operator support matrix: is the op supported, are its data inputs of a
type it supports, are the inputs it needs constant actually constant, and is the opset in range.

Source of the table: onnx/onnx-tensorrt, ``docs/operators.md`` at tag ``10.1-GA`` ("TensorRT 10.0
supports operators in the inclusive range of opset 9 to opset 20"), the newest release of that file
available offline here. The Kubernetes image builds with TensorRT 10.8 (Triton 25.01); when
bumping it, compare this table with that release's ``docs/operators.md``.

One rewrite makes the exported graphs pass: XLM-R computes position ids with a cumulative sum
over an INT64 mask, and the parser's CumSum takes FP32/FP16/BF16 only. ``make_tensorrt_safe``
wraps each integer CumSum in Casts to FP32 and back, exact for sums below 2**24 (position ids
stay under 8,194); the FP16 conversion keeps those nodes in FP32 (``TENSORRT_SAFE_TAG``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TensorRTCompatibilityError

if TYPE_CHECKING:
    import onnx

TABLE_SOURCE = "onnx/onnx-tensorrt docs/operators.md @ 10.1-GA"
MIN_OPSET, MAX_OPSET = 9, 20
TENSORRT_SAFE_TAG = "/tensorrt_safe/"
"""In the names of the nodes ``make_tensorrt_safe`` adds; they must stay FP32."""

_FLOAT = frozenset({"BF16", "FP16", "FP32"})
_NUMERIC = frozenset({"BF16", "FP16", "FP32", "INT32", "INT64"})
_ANY = frozenset({"BF16", "BOOL", "FP16", "FP32", "INT32", "INT64"})
_FP32_FP16 = frozenset({"FP16", "FP32"})
_BOOL = frozenset({"BOOL"})
_CAST = frozenset({"BF16", "BOOL", "FP16", "FP32", "INT32", "INT64", "UINT8"})
_QUANTIZED = frozenset({"FP8", "INT4", "INT8"})
_NUMERIC_INT8 = frozenset({"BF16", "FP16", "FP32", "INT32", "INT64", "INT8"})
_NUMERIC_FP8 = frozenset({"BF16", "FP16", "FP32", "FP8", "INT32", "INT64"})

SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    # float
    **dict.fromkeys(
        (
            "Acos",
            "Acosh",
            "Asin",
            "Asinh",
            "Atan",
            "Atanh",
            "AveragePool",
            "BatchNormalization",
            "Ceil",
            "Celu",
            "Clip",
            "Conv",
            "ConvTranspose",
            "Cos",
            "Cosh",
            "CumSum",
            "Dropout",
            "Einsum",
            "Elu",
            "Erf",
            "Exp",
            "Floor",
            "GRU",
            "Gemm",
            "GlobalAveragePool",
            "GlobalLpPool",
            "GlobalMaxPool",
            "GroupNormalization",
            "HardSigmoid",
            "HardSwish",
            "Hardmax",
            "ImageScaler",
            "InstanceNormalization",
            "IsInf",
            "LRN",
            "LSTM",
            "LayerNormalization",
            "LeakyRelu",
            "Log",
            "LogSoftmax",
            "LpNormalization",
            "LpPool",
            "MatMul",
            "MaxPool",
            "MeanVarianceNormalization",
            "PRelu",
            "ParametricSoftplus",
            "Pow",
            "QuantizeLinear",
            "RNN",
            "RandomNormal",
            "RandomNormalLike",
            "RandomUniform",
            "RandomUniformLike",
            "Reciprocal",
            "Resize",
            "Round",
            "ScaledTanh",
            "Scan",
            "Selu",
            "Sigmoid",
            "Sin",
            "Sinh",
            "Softmax",
            "Softplus",
            "Softsign",
            "Sqrt",
            "Tan",
            "Tanh",
            "ThresholdedRelu",
            "Upsample",
        ),
        _FLOAT,
    ),
    # numeric
    **dict.fromkeys(
        (
            "Abs",
            "Add",
            "ArgMax",
            "ArgMin",
            "DepthToSpace",
            "Div",
            "Equal",
            "Greater",
            "GreaterOrEqual",
            "IsNaN",
            "Less",
            "LessOrEqual",
            "Max",
            "Min",
            "Mod",
            "Mul",
            "Neg",
            "Pad",
            "Range",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
            "Relu",
            "Scatter",
            "ScatterElements",
            "ScatterND",
            "Shrink",
            "Sign",
            "SpaceToDepth",
            "Sub",
            "Sum",
            "TopK",
        ),
        _NUMERIC,
    ),
    # any
    **dict.fromkeys(
        (
            "Concat",
            "Constant",
            "ConstantOfShape",
            "Expand",
            "EyeLike",
            "Flatten",
            "Gather",
            "GatherElements",
            "GatherND",
            "Identity",
            "If",
            "Loop",
            "OneHot",
            "Reshape",
            "ReverseSequence",
            "Shape",
            "Size",
            "Slice",
            "Split",
            "Squeeze",
            "Tile",
            "Transpose",
            "Trilu",
            "Unsqueeze",
            "Where",
        ),
        _ANY,
    ),
    # fp32 fp16
    **dict.fromkeys(
        ("DeformConv", "GridSample", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign"),
        _FP32_FP16,
    ),
    # bool
    **dict.fromkeys(
        ("And", "Not", "Or", "Xor"),
        _BOOL,
    ),
    # cast
    **dict.fromkeys(
        ("Cast", "CastLike"),
        _CAST,
    ),
    # quantized
    **dict.fromkeys(
        ("DequantizeLinear"),
        _QUANTIZED,
    ),
    # numeric int8
    **dict.fromkeys(
        ("Gelu"),
        _NUMERIC_INT8,
    ),
    # numeric fp8
    **dict.fromkeys(
        ("Mean"),
        _NUMERIC_FP8,
    ),
}

# Inputs that carry the data whose type the table lists; the others are indices, shapes or axes.
DATA_INPUTS: dict[str, tuple[int, ...]] = {"Where": (1, 2)}
# Inputs the parser needs as constants ("must be an initializer" in the table's restrictions).
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {"CumSum": (1,), "Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,)}
_INTEGER_TYPES = ("INT32", "INT64")


@dataclass(frozen=True)
class Incompatibility:
    node: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.node!r}: {self.reason}"


def _type_names() -> dict[int, str]:
    from onnx import TensorProto as T

    return {
        T.FLOAT: "FP32",
        T.FLOAT16: "FP16",
        T.BFLOAT16: "BF16",
        T.INT32: "INT32",
        T.INT64: "INT64",
        T.BOOL: "BOOL",
        T.UINT8: "UINT8",
        T.INT8: "INT8",
        T.DOUBLE: "DOUBLE",
    }


def _tensor_types(model: onnx.ModelProto) -> dict[str, str]:
    """The element type of every named tensor that shape inference can type (weights not loaded)."""
    import onnx

    names = _type_names()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot read: type what the graph itself declares
        inferred = model
    graph = inferred.graph
    types = {
        value.name: names.get(value.type.tensor_type.elem_type, str(value.type.tensor_type.elem_type))
        for value in (*graph.value_info, *graph.input, *graph.output)
    }
    types.update({init.name: names.get(init.data_type, str(init.data_type)) for init in graph.initializer})
    return types


def find_incompatibilities(model: onnx.ModelProto) -> list[Incompatibility]:
    """Every reason TensorRT's ONNX parser (per ``TABLE_SOURCE``) would refuse ``model``'s main graph."""
    problems = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not MIN_OPSET <= opset.version <= MAX_OPSET:
            problems.append(
                Incompatibility("(model)", "opset", f"opset {opset.version} outside {MIN_OPSET}-{MAX_OPSET}")
            )
    types = _tensor_types(model)
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    for node in graph.node:
        name = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            problems.append(
                Incompatibility(name, node.op_type, f"custom domain {node.domain!r} needs a TensorRT plugin")
            )
            continue
        supported = SUPPORTED_TYPES.get(node.op_type)
        if supported is None:
            problems.append(Incompatibility(name, node.op_type, "not supported by TensorRT's ONNX parser"))
            continue
        for index in DATA_INPUTS.get(node.op_type, (0,)):
            if index < len(node.input) and node.input[index]:
                dtype = types.get(node.input[index])
                if dtype is not None and dtype not in supported:
                    problems.append(
                        Incompatibility(
                            name, node.op_type, f"input {index} is {dtype}; supported: {', '.join(sorted(supported))}"
                        )
                    )
        for index in CONSTANT_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                problems.append(Incompatibility(name, node.op_type, f"input {index} must be a constant"))
    return problems


def check_tensorrt_compatible(path: Path) -> None:
    """Raise :class:`TensorRTCompatibilityError` naming each node TensorRT would refuse in the graph at ``path``."""
    import onnx

    problems = find_incompatibilities(onnx.load(str(path), load_external_data=False))
    if problems:
        listed = "; ".join(str(p) for p in problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise TensorRTCompatibilityError(
            f"{path.name}: TensorRT ({TABLE_SOURCE}) would refuse {len(problems)} node(s): {listed}{more}"
        )


def make_tensorrt_safe(model: onnx.ModelProto) -> int:
    """Rewrite what TensorRT refuses but can be computed its way; returns the number of nodes changed.

    Today: integer CumSum runs in FP32 between two Casts (exact below 2**24).
    """
    from onnx import TensorProto, helper

    types = _tensor_types(model)
    graph = model.graph
    rewritten: list[onnx.NodeProto] = []
    changed = 0
    for index, node in enumerate(graph.node):
        dtype = types.get(node.input[0]) if node.op_type == "CumSum" else None
        if dtype not in _INTEGER_TYPES:
            rewritten.append(node)
            continue
        base = f"{node.name or f'CumSum_{index}'}{TENSORRT_SAFE_TAG}"
        as_float, summed = f"{base}input_fp32", f"{base}output_fp32"
        original_output = node.output[0]
        rewritten.append(
            helper.make_node("Cast", [node.input[0]], [as_float], name=f"{base}cast_in", to=TensorProto.FLOAT)
        )
        node.input[0] = as_float
        node.output[0] = summed
        node.name = f"{base}cumsum"
        rewritten.append(node)
        back = TensorProto.INT64 if dtype == "INT64" else TensorProto.INT32
        rewritten.append(helper.make_node("Cast", [summed], [original_output], name=f"{base}cast_out", to=back))
        changed += 1
    if changed:
        del graph.node[:]
        graph.node.extend(rewritten)
        # The value_info of the rewritten outputs is stale; shape inference recomputes it.
        kept = [v for v in graph.value_info if TENSORRT_SAFE_TAG not in v.name]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return changed


def tensorrt_safe_nodes(model: onnx.ModelProto) -> Iterable[str]:
    """Names of the nodes ``make_tensorrt_safe`` added or changed (to keep in FP32)."""
    return [node.name for node in model.graph.node if TENSORRT_SAFE_TAG in node.name]
