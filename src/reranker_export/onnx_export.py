"""PyTorch cross-encoder -> ONNX (inputs input_ids/attention_mask[/token_type_ids], output logits [batch, 1])."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OnnxExportError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

OPSET = 18  # >= 17 keeps LayerNormalization a single op (kept in FP32 by the FP16 pass)
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30  # protobuf caps a single file at 2 GiB; stay well below it


def external_data_name(onnx_path: Path) -> str:
    """The one sidecar file that holds the weights of a large graph (Triton's ORT backend loads it)."""
    return onnx_path.name + ".data"


def _wrapper(model: PreTrainedModel, input_names: Sequence[str]) -> torch.nn.Module:
    """A module with named positional inputs in ONNX order and one output, the relevance logit."""
    import torch

    class PairLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits

    class TypedPairLogits(PairLogits):
        def forward(  # type: ignore[override]
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            ).logits

    if tuple(input_names) == ("input_ids", "attention_mask"):
        return PairLogits().eval()
    if tuple(input_names) == ("input_ids", "attention_mask", "token_type_ids"):
        return TypedPairLogits().eval()
    raise OnnxExportError(f"unsupported model inputs {list(input_names)}")


def export_onnx(
    model: PreTrainedModel,
    output_path: Path,
    *,
    input_names: Sequence[str] = ("input_ids", "attention_mask"),
    opset: int = OPSET,
) -> Path:
    """Export ``model`` to ``output_path`` with dynamic batch and sequence axes.

    Graphs whose weights exceed 1 GiB are saved with external data in one sidecar file
    (``<name>.data``) next to the graph, the layout Triton's ONNX Runtime backend loads. The graph
    is then made TensorRT-safe (``tensorrt_compat.make_tensorrt_safe``), for every profile, so ONNX
    Runtime and TensorRT run the same graph.
    """
    import torch

    output_path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD_BYTES
    # Batch 2 and length 16: examples of size 1 would let the tracer specialise the axes.
    example = tuple(torch.full((2, 16), 5, dtype=torch.long) for _ in input_names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {name: {0: batch, 1: sequence} for name in input_names}
    # The exporter logs every optional op it cannot register (torchvision's) and warns about
    # internals; none of it is actionable for a cross-encoder, so keep progress output readable.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _wrapper(model, input_names),
                example,
                dynamo=True,
                input_names=list(input_names),
                output_names=["logits"],
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                external_data=external,
                optimize=True,
                verbose=False,
            )
            if program is None:  # pragma: no cover - dynamo=True always returns a program
                raise OnnxExportError("torch.onnx.export returned no program")
            program.save(str(output_path), external_data=external)
    except OnnxExportError:
        raise
    except Exception as exc:
        raise OnnxExportError(f"exporting {type(model).__name__} to ONNX failed: {exc}") from exc
    finally:
        gc.collect()
    make_tensorrt_safe_in_place(output_path)
    _check_signature(output_path, input_names)
    return output_path


def make_tensorrt_safe_in_place(path: Path) -> None:
    """Rewrite the graph in place where TensorRT needs it; the weights (a sidecar) are not touched."""
    import onnx

    from .tensorrt_compat import make_tensorrt_safe

    model = onnx.load(str(path), load_external_data=False)
    if make_tensorrt_safe(model):
        onnx.save(model, str(path))


def _check_signature(path: Path, input_names: Sequence[str]) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    got_inputs = [i.name for i in graph.input]
    got_outputs = [o.name for o in graph.output]
    if got_inputs != list(input_names) or got_outputs != ["logits"]:
        raise OnnxExportError(
            f"exported graph has inputs {got_inputs} and outputs {got_outputs}; "
            f"expected {list(input_names)} and ['logits']"
        )
