"""Numeric validation of exported graphs on the fixed probe set. A failure raises; it is never a warning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker_common.agreement import agreement

from .errors import Fp16ToleranceError, Int8AgreementError, ParityError, ValidationError
from .probes import PROBE_PASSAGES, PROBE_QUERIES, encode_pairs, probe_pairs
from .settings import PairSemantics

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2
INT8_MIN_TOP5_OVERLAP = 0.9
INT8_MIN_KENDALL_TAU = 0.8
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


@dataclass(frozen=True)
class Int8Report:
    """INT8 graph against the FP32 graph, both in ONNX Runtime: rankings per query."""

    source: str
    """``probe set`` or the agreement file's path."""
    queries: int
    max_abs_diff: float
    top5_overlap: float
    kendall_tau: float
    min_top5_overlap: float
    min_kendall_tau: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_inputs(
    tokenizer: PreTrainedTokenizerFast,
    *,
    max_length: int,
    query_max_length: int,
    input_names: Sequence[str],
    pair_semantics: PairSemantics = PairSemantics.FLAG,
) -> dict[str, np.ndarray]:
    return encode_pairs(
        tokenizer,
        probe_pairs(),
        max_length=max_length,
        query_max_length=query_max_length,
        input_names=input_names,
        pair_semantics=pair_semantics,
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
    out = []
    for batch in _batches(inputs):
        logits = np.asarray(session.run(["logits"], batch)[0], dtype=np.float32)
        rows = len(batch["input_ids"])
        if logits.shape != (rows, 1):
            raise ValidationError(
                f"the graph's logits are {list(logits.shape)} for {rows} rows; the contract is [rows, 1]"
            )
        out.append(logits.reshape(-1))
    return np.concatenate(out)


def check_finite(logits: np.ndarray) -> None:
    """What is checked when parity cannot be: the graph runs on the probe set and gives finite logits."""
    if not np.all(np.isfinite(logits)):
        raise ValidationError("the ONNX graph produced non-finite logits on the probe set")


def check_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    tolerance: float = FP32_TOLERANCE,
    what: str = "ONNX Runtime differs from PyTorch",
) -> ParityReport:
    if not np.all(np.isfinite(candidate)):
        raise ParityError("the ONNX graph produced non-finite logits on the probe set")
    diff = float(np.max(np.abs(reference - candidate)))
    report = ParityReport(pairs=len(reference), max_abs_diff=diff, tolerance=tolerance)
    if not diff <= tolerance:
        raise ParityError(
            f"{what} by {diff:.3g} (max abs logit) on {len(reference)} probe pairs; the tolerance is {tolerance:g}"
        )
    return report


def read_agreement_file(path: Path) -> list[tuple[str, list[str]]]:
    """(query, candidates) groups of a JSONL file: ``{"query": str, "candidates": [str | {"text": str}]}``
    per line, the format ``reranker-eval`` reads. ``ValueError`` names the first bad line."""
    import json

    groups = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the agreement file {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            candidates = [c if isinstance(c, str) else str(c["text"]) for c in record["candidates"]]
            query = str(record["query"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f'{path}:{number}: expected {{"query": text, "candidates": [text or {{"text": text}}, ...]}} ({exc})'
            ) from None
        if len(candidates) >= 2:  # a ranking needs two candidates
            groups.append((query, candidates))
    if not groups:
        raise ValueError(f"{path} holds no query with two or more candidates")
    return groups


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


def check_int8(
    fp32: Sequence[np.ndarray],
    int8: Sequence[np.ndarray],
    *,
    source: str = "probe set",
    min_top5_overlap: float = INT8_MIN_TOP5_OVERLAP,
    min_kendall_tau: float = INT8_MIN_KENDALL_TAU,
) -> Int8Report:
    """Gate INT8 on ranking agreement with FP32, per query (one array of candidate logits each).

    Logits move under dynamic INT8 by more than FP16's tolerance without the ranking moving, so
    the gate is the ranking: mean top-5 overlap and Kendall tau over the queries.
    """
    if not all(np.all(np.isfinite(row)) for row in int8):
        raise Int8AgreementError(f"the INT8 graph produced non-finite logits on the {source}")
    ranks = agreement(list(fp32), list(int8), k=5)
    report = Int8Report(
        source=source,
        queries=ranks.queries,
        max_abs_diff=float(max(np.max(np.abs(a - b)) for a, b in zip(fp32, int8, strict=True))),
        top5_overlap=ranks.top_k_overlap,
        kendall_tau=ranks.kendall_tau,
        min_top5_overlap=min_top5_overlap,
        min_kendall_tau=min_kendall_tau,
    )
    if report.top5_overlap < min_top5_overlap or report.kendall_tau < min_kendall_tau:
        raise Int8AgreementError(
            f"INT8 rankings on the {source} agree with FP32 by top-5 overlap {report.top5_overlap:.3f} "
            f"(minimum {min_top5_overlap:g}) and Kendall tau {report.kendall_tau:.3f} (minimum {min_kendall_tau:g}); "
            "serve FP32 (optionally --graph-fusion), or lower --int8-min-top5/--int8-min-tau if that is acceptable"
        )
    return report


def per_probe_query(logits: np.ndarray) -> list[np.ndarray]:
    """Probe-set logits (query-major) as one row of candidates per probe query."""
    return list(logits.reshape(len(PROBE_QUERIES), len(PROBE_PASSAGES)))
