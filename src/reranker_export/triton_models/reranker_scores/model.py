"""Triton python-backend model ``reranker_scores`` (window mode): window logits -> document scores.

Self-contained (copied verbatim to ``<repo>/reranker_scores/1/model.py``); imports only numpy and
``triton_python_backend_utils``.

Inputs: ``logits`` FP32, one per row (``reranker_model`` gives [rows, 1]; any shape with one value
per row is accepted) and ``document_index`` INT32 [rows], the document each row came from.
Output: ``scores`` FP32 [N], N = max(document_index) + 1, the maximum logit over each document's
rows (a long document scores as its best window). Without ``document_index`` (optional input) the
logits pass through flattened to [rows].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


def _invalid_argument(message: str) -> Any:
    try:
        error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # python backends older than 23.09 have no error codes
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def max_per_document(logits: np.ndarray, document_index: np.ndarray) -> np.ndarray:
    """Maximum of ``logits`` over the rows of each document, in document order."""
    n = int(document_index.max()) + 1
    scores = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(scores, document_index, logits)
    return scores


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            logits = logits.reshape(-1).astype(np.float32, copy=False)
            index_tensor = pb_utils.get_input_tensor_by_name(request, "document_index")
            if index_tensor is None:
                scores = logits
            else:
                index = index_tensor.as_numpy().reshape(-1).astype(np.int64, copy=False)
                if index.shape[0] != logits.shape[0] or index.shape[0] == 0:
                    responses.append(
                        _invalid_argument(
                            f"'document_index' must give one document per logit row: "
                            f"{index.shape[0]} indices for {logits.shape[0]} logits"
                        )
                    )
                    continue
                if index.min() < 0:
                    responses.append(_invalid_argument("'document_index' must not be negative"))
                    continue
                missing = np.flatnonzero(np.bincount(index) == 0)
                if missing.size:
                    responses.append(
                        _invalid_argument(
                            f"documents {missing[:5].tolist()} have no rows in 'document_index'"
                        )
                    )
                    continue
                scores = max_per_document(logits, index)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("scores", scores)]))
        return responses
