"""Triton python-backend model ``reranker_scores`` (window mode): window logits -> document scores.

A thin adapter over ``reranker_steps.windows``, rendered beside this file; imports only numpy and
``triton_python_backend_utils``.

Inputs: ``logits`` FP32, one per row (``reranker_model`` gives [rows, 1]) and ``document_index``
INT32 [rows], the document each row came from (optional: without it the logits pass through
flattened). Output: ``scores`` FP32 [N], the maximum logit over each document's rows.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # reranker_steps/ sits beside this file

from reranker_steps.errors import BadRequest
from reranker_steps.triton import answer_each, input_array
from reranker_steps.windows import document_scores

STEP = "reranker_scores"


def _scores(request: Any) -> dict[str, Any]:
    logits = input_array(request, "logits")
    if logits is None:
        raise BadRequest("send input 'logits' (FP32, one per row)")
    return {"scores": document_scores(logits, input_array(request, "document_index"))}


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        return answer_each(STEP, requests, _scores)
