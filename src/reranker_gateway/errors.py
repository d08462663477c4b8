"""HTTP errors of the gateway, and the one place where client errors become HTTP statuses.

============================  ======  ===========================================================
cause                         status  notes
============================  ======  ===========================================================
body that is not JSON         400     ``message`` says where the JSON breaks
body that breaks the schema   422     ``detail`` lists each field (``loc``) and what is wrong
an option the server cannot   422     ``max_tokens_per_doc`` below what the server keeps, window-mode
honour                               options (``limits.CannotHonourError``)
text the server rejects       400     ``InvalidInputError``: oversized document, invalid Unicode, ...
unknown ``model``             404     the served name is in the message
missing or wrong API key      401     ``WWW-Authenticate: Bearer``
body over the size limit      413     before the body is read
more documents than allowed   413
Triton unavailable/overloaded 503     ``Retry-After``; ``ServerUnavailableError`` and subclasses
model not ready               503     ``Retry-After``; ``ModelNotReadyError``
deadline passed               504     ``DeadlineExceededError``
any other Triton failure      502     ``ServerError``: the upstream failed, not the request
============================  ======  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reranker_client import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotReadyError,
    RerankerError,
    ServerUnavailableError,
)


@dataclass
class GatewayError(Exception):
    """An HTTP error answer: status, one-line message, a short reason (metrics label), extra headers."""

    status: int
    message: str
    reason: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


def from_client_error(error: RerankerError, *, retry_after_s: int) -> GatewayError:
    """The HTTP answer for a client error; order matters (subclasses first)."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(error, InvalidInputError):
        return GatewayError(400, str(error), "invalid_input")
    if isinstance(error, ServerUnavailableError):
        # "serverunavailable", or "overloaded" for the subclass raised when Triton sheds load.
        return GatewayError(503, str(error), type(error).__name__.removesuffix("Error").lower(), retry)
    if isinstance(error, ModelNotReadyError):
        return GatewayError(503, str(error), "model_not_ready", retry)
    if isinstance(error, DeadlineExceededError):
        return GatewayError(504, str(error), "deadline_exceeded")
    return GatewayError(502, str(error), "upstream_error")
