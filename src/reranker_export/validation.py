"""Numeric validation of exported graphs on the fixed probe set. A failure raises; it is never a warning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker_common.agreement import agreement

from .errors import Fp16ToleranceError, ParityError
from .probes import PROBE_PASSAGES, PROBE_QUERIES, encode_pairs, probe_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2
BATCH = 8  # probe rows per forward pass: bounds memory for the full-size model


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime (FP32) against PyTorch."""

    pairs: int
    max_abs_diff: float
    tolerance: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fp16Report:
    """FP16 graph against the FP32 graph, both in ONNX Runtime."""

    pairs: int
    max_abs_diff: float
    tolerance: float
    top5_overlap: float
    """Mean over probe queries of |top-5(fp16) ∩ top-5(fp32)| / 5."""
    kendall_tau: float
    """Mean over probe queries of Kendall's tau-b between the two rankings."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_inputs(
    tokenizer: PreTrainedTokenizerFast,
    *,
    max_length: int,
    query_max_length: int,
    input_names: Sequence[str],
) -> dict[str, np.ndarray]:
    return encode_pairs(
        tokenizer,
        probe_pairs(),
        max_length=max_length,
        query_max_length=query_max_length,
        input_names=input_names,
    )


def _batches(inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    rows = len(next(iter(inputs.values())))
    return [{k: v[i : i + BATCH] for k, v in inputs.items()} for i in range(0, rows, BATCH)]


def torch_logits(model: PreTrainedModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for batch in _batches(inputs):
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
            out.append(model(**tensors, return_dict=True).logits.float().numpy().reshape(-1))
    return np.concatenate(out)


def onnx_logits(onnx_path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [np.asarray(session.run(["logits"], batch)[0], dtype=np.float32).reshape(-1) for batch in _batches(inputs)]
    )


def check_parity(reference: np.ndarray, candidate: np.ndarray, *, tolerance: float = FP32_TOLERANCE) -> ParityReport:
    if not np.all(np.isfinite(candidate)):
        raise ParityError("the ONNX graph produced non-finite logits on the probe set")
    diff = float(np.max(np.abs(reference - candidate)))
    report = ParityReport(pairs=len(reference), max_abs_diff=diff, tolerance=tolerance)
    if not diff <= tolerance:
        raise ParityError(
            f"ONNX Runtime differs from PyTorch by {diff:.3g} (max abs logit) on {len(reference)} probe pairs; "
            f"the tolerance is {tolerance:g}"
        )
    return report


def check_fp16(fp32: np.ndarray, fp16: np.ndarray, *, tolerance: float = FP16_TOLERANCE) -> Fp16Report:
    """Compare logits of the probe set; rankings are per probe query over every probe passage."""
    if not np.all(np.isfinite(fp16)):
        raise Fp16ToleranceError(
            "the FP16 graph produced non-finite logits (overflow): keep more ops in FP32 or export FP32"
        )
    diff = float(np.max(np.abs(fp32 - fp16)))
    per_query32 = fp32.reshape(len(PROBE_QUERIES), len(PROBE_PASSAGES))
    per_query16 = fp16.reshape(len(PROBE_QUERIES), len(PROBE_PASSAGES))
    ranks = agreement(list(per_query32), list(per_query16), k=5)
    report = Fp16Report(
        pairs=len(fp32),
        max_abs_diff=diff,
        tolerance=tolerance,
        top5_overlap=ranks.top_k_overlap,
        kendall_tau=ranks.kendall_tau,
    )
    if not diff <= tolerance:
        raise Fp16ToleranceError(
            f"FP16 differs from FP32 by {diff:.3g} (max abs logit; top-5 overlap {report.top5_overlap:.2f}, "
            f"Kendall tau {report.kendall_tau:.3f}); the tolerance is {tolerance:g}: "
            "raise --fp16-tolerance if that is acceptable, or serve FP32"
        )
    return report
