"""What every python step shares with Triton: reading inputs, per-request answers, error codes.

The one module of ``reranker_steps`` that imports ``triton_python_backend_utils``, which exists only
inside Triton's python backend; the steps' ``model.py`` adapters use it, tests use the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from .abandonment import Abandonment
from .errors import Abandoned, BadRequest


def error_response(message: str, *, code: str = "INTERNAL") -> Any:
    """An error answer with one of ``pb_utils.TritonError``'s codes (INVALID_ARG, CANCELLED, INTERNAL)."""
    try:
        error = pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))
    except (AttributeError, TypeError):  # python backends older than 23.09 have no error codes
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def failure_response(step: str, exc: BaseException) -> Any:
    """The answer to an exception: ``BadRequest`` is the caller's to fix, ``Abandoned`` has nobody
    to read it (CANCELLED); anything else is ours (INTERNAL)."""
    if isinstance(exc, BadRequest):
        return error_response(str(exc), code="INVALID_ARG")
    if isinstance(exc, Abandoned):
        return error_response(f"{step}: not computed, {exc}", code="CANCELLED")
    return error_response(f"{step} failed: {type(exc).__name__}: {exc}")


class StepMetrics:
    """The steps' own counters, on Triton's metrics endpoint beside its own (python backend custom
    metrics): rows computed and skipped, and requests abandoned by reason. No-ops where the
    python backend has no custom metrics."""

    def __init__(self, step: str) -> None:
        self.step = step
        self._metrics: dict[tuple[str, str], Any] = {}
        try:
            counter = pb_utils.MetricFamily.COUNTER
            self._families = {
                "rows_scored": pb_utils.MetricFamily(
                    name="reranker_rows_scored_total", description="Rows (pairs or windows) computed", kind=counter
                ),
                "rows_skipped": pb_utils.MetricFamily(
                    name="reranker_rows_skipped_total",
                    description="Rows not computed because their request was abandoned",
                    kind=counter,
                ),
                "abandoned": pb_utils.MetricFamily(
                    name="reranker_requests_abandoned_total",
                    description="Requests a step stopped working on: cancelled, or past their timeout",
                    kind=counter,
                ),
            }
        except AttributeError:
            self._families = {}

    def add(self, family: str, value: float, **labels: str) -> None:
        if value <= 0 or family not in self._families:
            return
        key = (family, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            metric = self._families[family].Metric(labels={"step": self.step, **labels})
            self._metrics[key] = metric
        metric.increment(value)

    def abandoned(self, reason: str) -> None:
        self.add("abandoned", 1, reason="cancelled" if reason.startswith("cancelled") else "deadline")


def success_response(outputs: Mapping[str, np.ndarray]) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()])


def input_array(request: Any, name: str) -> np.ndarray | None:
    """The request's input ``name`` as numpy, or ``None`` when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def answer_each(
    step: str,
    requests: Sequence[Any],
    handle: Callable[[Any], Mapping[str, np.ndarray]],
    metrics: StepMetrics | None = None,
) -> list[Any]:
    """One answer per request, each on its own: a bad or failing request never fails the others,
    and a bug answers that request with INTERNAL instead of taking the model down. A request
    nobody waits for any more is answered CANCELLED without being worked on."""
    responses = []
    abandonment = Abandonment(requests)
    for index, request in enumerate(requests):
        try:
            if (reason := abandonment.reason(index)) is not None:
                if metrics is not None:
                    metrics.abandoned(reason)
                raise Abandoned(reason)
            responses.append(success_response(handle(request)))
        except Exception as exc:
            responses.append(failure_response(step, exc))
    return responses
