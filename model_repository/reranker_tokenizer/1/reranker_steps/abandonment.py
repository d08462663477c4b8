"""Whether the requests of one execution are still wanted; plain Python over duck-typed requests.

Triton cancels a request whose gRPC caller went away, and the request carries its timeout (the
Python client sends its remaining deadline). A request's age is at least the time since the
execution began, so a request running longer than its timeout is certainly past its caller's
deadline. Triton's queue policy already drops such requests while they wait; this covers the time
they spend being computed.

Asking whether a request was cancelled is a round trip from the python stub to the server
process. Asked before every onnxruntime sub-batch of every request, it took 8.8% of the cpu model
step's time at saturation (py-spy of the stub, 16 closed-loop callers, docs/benchmarks.md), so it
is asked at most every ``CANCEL_POLL_INTERVAL_S`` per request; the timeout, known in the stub, is
checked every time, and first: a request both cancelled and past its timeout counts as past its
deadline (``reason="deadline"`` in ``reranker_requests_abandoned_total``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

CANCEL_POLL_INTERVAL_S = 0.025
"""Longest a cancelled request goes on being computed before its step notices (besides the sub-batch in progress)."""


class Abandonment:
    """``reason(i)``: why request ``i`` of an execution is no longer wanted, or ``None``."""

    def __init__(
        self,
        requests: Sequence[Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        poll_interval_s: float = CANCEL_POLL_INTERVAL_S,
    ) -> None:
        self.requests = requests
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.started = clock()
        self._polled_at: dict[int, float] = {}

    def reason(self, index: int) -> str | None:
        request = self.requests[index]
        now = self.clock()
        timeout_us = _call(request, "timeout", 0)
        if timeout_us and (now - self.started) * 1e6 > timeout_us:
            return f"past its {timeout_us / 1e6:g} s timeout"
        polled_at = self._polled_at.get(index)
        if polled_at is None or now - polled_at >= self.poll_interval_s:
            self._polled_at[index] = now
            if _call(request, "is_cancelled", False):
                return "cancelled by the caller"
        return None


def _call(request: Any, method: str, default: Any) -> Any:
    """A request method that older python backends lack (``is_cancelled`` came in 23.10)."""
    function = getattr(request, method, None)
    return function() if function is not None else default
