"""What every python step shares with Triton: reading inputs, per-request answers, error codes.

The one module of ``reranker_steps`` that imports ``triton_python_backend_utils``, which exists only
inside Triton's python backend; the steps' ``model.py`` adapters use it, tests use the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from .errors import BadRequest


def error_response(message: str, *, invalid_argument: bool) -> Any:
    """An error answer: INVALID_ARGUMENT for a request the caller must change, else INTERNAL."""
    try:
        code = pb_utils.TritonError.INVALID_ARG if invalid_argument else pb_utils.TritonError.INTERNAL
        error = pb_utils.TritonError(message, code)
    except (AttributeError, TypeError):  # python backends older than 23.09 have no error codes
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def failure_response(step: str, exc: BaseException) -> Any:
    """The answer to an exception: ``BadRequest`` is the caller's to fix; anything else is ours."""
    if isinstance(exc, BadRequest):
        return error_response(str(exc), invalid_argument=True)
    return error_response(f"{step} failed: {type(exc).__name__}: {exc}", invalid_argument=False)


def success_response(outputs: Mapping[str, np.ndarray]) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()])


def input_array(request: Any, name: str) -> np.ndarray | None:
    """The request's input ``name`` as numpy, or ``None`` when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def answer_each(step: str, requests: Sequence[Any], handle: Callable[[Any], Mapping[str, np.ndarray]]) -> list[Any]:
    """One answer per request, each on its own: a bad or failing request never fails the others,
    and a bug answers that request with INTERNAL instead of taking the model down."""
    responses = []
    for request in requests:
        try:
            responses.append(success_response(handle(request)))
        except Exception as exc:
            responses.append(failure_response(step, exc))
    return responses
