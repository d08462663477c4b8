"""The ``reranker_scores`` step (window mode): window logits -> one score per document.

A long document scores as its best window: the maximum logit over the rows it was split into.
"""

from __future__ import annotations

import numpy as np

from .errors import BadRequest


def check_document_index(document_index: np.ndarray, rows: int) -> np.ndarray:
    """``document_index`` as int64 [rows], or ``BadRequest``: one index per row, every document covered."""
    index = document_index.reshape(-1).astype(np.int64, copy=False)
    if index.shape[0] != rows or rows == 0:
        raise BadRequest(
            f"'document_index' must give one document per logit row: {index.shape[0]} indices for {rows} logits"
        )
    if index.min() < 0:
        raise BadRequest("'document_index' must not be negative")
    missing = np.flatnonzero(np.bincount(index) == 0)
    if missing.size:
        raise BadRequest(f"documents {missing[:5].tolist()} have no rows in 'document_index'")
    return index


def max_per_document(logits: np.ndarray, document_index: np.ndarray) -> np.ndarray:
    """Maximum of ``logits`` over the rows of each document, in document order: FP32 [documents]."""
    scores = np.full(int(document_index.max()) + 1, -np.inf, dtype=np.float32)
    np.maximum.at(scores, document_index, logits.reshape(-1))
    return scores


def document_scores(logits: np.ndarray, document_index: np.ndarray | None) -> np.ndarray:
    """The step: logits (one per row, any shape) -> scores FP32 [N]; without an index, logits flattened."""
    flat = logits.reshape(-1).astype(np.float32, copy=False)
    if document_index is None:
        return flat
    return max_per_document(flat, check_document_index(document_index, flat.shape[0]))
