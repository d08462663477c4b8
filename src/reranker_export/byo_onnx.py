"""Bring your own ONNX: check an existing export against the ensemble contract and stage it.

The route for models whose repository ships an ONNX file (Jina Reranker v2's ``onnx/model.onnx``)
or whose PyTorch code does not export. ``reranker_model`` is fed ``input_ids``, ``attention_mask``
and, for BERT-like models, ``token_type_ids`` (INT64 [rows, length]) and must return one FP32
logit per row, ``logits`` [rows, 1]. A graph whose only output has another name is renamed;
anything else that does not fit is an :class:`OnnxContractError` naming what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OnnxContractError
from .onnx_export import EXTERNAL_DATA_THRESHOLD_BYTES, external_data_name, make_tensorrt_safe_in_place

if TYPE_CHECKING:
    import onnx

KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_contract(model: onnx.ModelProto) -> tuple[str, ...]:
    """The graph's input names in contract order; :class:`OnnxContractError` where it does not fit.

    Renames the single float output to ``logits`` when it has another name.
    """
    import onnx

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]  # old exports list weights as inputs
    names = [i.name for i in inputs]
    unknown = [n for n in names if n not in KNOWN_INPUTS]
    if unknown or not {"input_ids", "attention_mask"} <= set(names):
        raise OnnxContractError(
            f"the ONNX inputs are {names}; the ensemble feeds input_ids, attention_mask and optionally "
            f"token_type_ids{f' (unknown: {unknown})' if unknown else ''}"
        )
    for value in inputs:
        if value.type.tensor_type.elem_type != onnx.TensorProto.INT64 or len(_dims(value)) != 2:
            raise OnnxContractError(
                f"ONNX input {value.name!r} is {onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)} "
                f"{_dims(value)}; the ensemble feeds INT64 [rows, length]: re-export with int64 inputs"
            )
        if any(isinstance(d, int) and d > 0 for d in _dims(value)):
            raise OnnxContractError(
                f"ONNX input {value.name!r} has fixed dims {_dims(value)}; batch and length must be dynamic"
            )
    outputs = [o for o in graph.output if o.name == OUTPUT_NAME] or list(graph.output)
    if len(outputs) != 1:
        raise OnnxContractError(
            f"the ONNX graph has outputs {[o.name for o in graph.output]} and none is named {OUTPUT_NAME!r}; "
            "the ensemble needs one relevance logit per row"
        )
    (output,) = outputs
    dims = _dims(output)
    if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 2 or dims[1] not in (1, ""):
        raise OnnxContractError(
            f"ONNX output {output.name!r} is {onnx.TensorProto.DataType.Name(output.type.tensor_type.elem_type)} "
            f"{dims}; the ensemble needs FLOAT [rows, 1] (an FP32-output export of a one-logit model)"
        )
    if output.name != OUTPUT_NAME:
        old = output.name
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
            node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
        output.name = OUTPUT_NAME
    return tuple(name for name in KNOWN_INPUTS if name in names)


def stage_onnx(source: Path, target: Path) -> tuple[str, ...]:
    """Check ``source`` against the contract and write it to ``target`` in the repository's layout.

    Weights over 1 GiB go to one ``<name>.data`` sidecar (the layout the renderer copies), whatever
    external-data layout the source used. Returns the graph's input names in contract order.
    """
    import onnx

    if not source.is_file():
        raise OnnxContractError(f"--onnx {source} does not exist")
    try:
        model = onnx.load(str(source), load_external_data=True)
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:
        raise OnnxContractError(f"{source} is not a loadable ONNX model: {exc}") from exc
    input_names = check_contract(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=external_data_name(target),
    )
    del model
    make_tensorrt_safe_in_place(target)  # the same rewrite every export gets, for every profile
    return input_names
