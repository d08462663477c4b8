"""The client's exception tree, and the one place where gRPC failures become it.

::

    RerankerError                 root: catch this to handle every client failure
    ├── InvalidInputError         INVALID_ARGUMENT: the request is wrong (too many or no documents,
    │                             oversized text, invalid UTF-8); fix the input, do not retry.
    │                             Also raised before sending for text that is not valid Unicode
    ├── ServerUnavailableError    UNAVAILABLE after the retries the deadline and retry budget allowed
    │   └── OverloadedError       the server shed the request (its queue was full, or the request
    │                             waited in it past its deadline): back off, or add capacity.
    │                             Also raised at once, unsent (``code`` None), while the server
    │                             sheds most of this client's requests (``RetryPolicy.throttle``)
    ├── DeadlineExceededError     DEADLINE_EXCEEDED: the call's deadline passed before an answer
    ├── ModelNotReadyError        NOT_FOUND: the server is up but the model is not loaded (or unknown)
    └── ServerError               fallback: any other status (INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, ...)
                                  or a malformed response

Retried before raising (``RetryPolicy``), within the deadline and the retry budget: UNAVAILABLE
(both kinds above, but not the client's own refusals) and INTERNAL from a python step whose stub
process died. Never retried: INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND and any other
INTERNAL.

Every instance carries ``code`` (the ``grpc.StatusCode``, or ``None`` for failures found on the
client side) and chains the original exception (``__cause__``). Non-string documents or queries
are a programming error and raise the built-in ``TypeError`` before anything is sent.
"""

from __future__ import annotations

import grpc
from tritonclient.utils import InferenceServerException


class RerankerError(Exception):
    """Root of every error the reranker client raises."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidInputError(RerankerError):
    """The server (or the client, before sending) rejected the request as invalid."""


class ServerUnavailableError(RerankerError):
    """No server answered: UNAVAILABLE on every attempt the deadline allowed."""


class OverloadedError(ServerUnavailableError):
    """The server refused the request to protect its latency (Triton's queue policy): the queue
    was full, or the request waited in it longer than its timeout. Retries did not get it through.
    Or the client refused it without sending it (``code`` is ``None``), because the server had
    been refusing most of this client's requests (``AdaptiveThrottle``)."""


class DeadlineExceededError(RerankerError):
    """The call's deadline passed before the server answered."""


class ModelNotReadyError(RerankerError):
    """The server answered, but the requested model is not loaded or not ready."""


class ServerError(RerankerError):
    """Any other server-side failure, or a response the client cannot decode."""


_BY_CODE: dict[grpc.StatusCode, type[RerankerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: ModelNotReadyError,
}


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a failed call, as the enum, or ``None`` when it has none.

    tritonclient turns ``grpc.RpcError`` into ``InferenceServerException`` whose ``status()`` is the
    enum's ``str()`` ("StatusCode.UNAVAILABLE"); this parses it back to the enum once, here.
    """
    if isinstance(error, grpc.RpcError):
        code = getattr(error, "code", None)
        value = code() if callable(code) else None
        return value if isinstance(value, grpc.StatusCode) else None
    if isinstance(error, InferenceServerException):
        status = error.status()
        if isinstance(status, str) and status.startswith("StatusCode."):
            return grpc.StatusCode.__members__.get(status.removeprefix("StatusCode."))
    return None


# Triton's words (core's scheduler_utils.cc and dynamic_batch_scheduler.cc) for a request its queue
# policy refused; both come with UNAVAILABLE.
SHED_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")
# The python backend's words for a step whose stub process is gone (killed, out of memory).
STUB_FAILURE_MESSAGES = ("Stub process", "is not healthy")


def is_shed(error: BaseException) -> bool:
    """UNAVAILABLE because Triton's queue policy refused the request (not because nobody answered)."""
    return status_code(error) is grpc.StatusCode.UNAVAILABLE and any(m in _details(error) for m in SHED_MESSAGES)


def is_stub_failure(error: BaseException) -> bool:
    """INTERNAL because a python step's stub process died: another attempt may well succeed."""
    return status_code(error) is grpc.StatusCode.INTERNAL and any(m in _details(error) for m in STUB_FAILURE_MESSAGES)


def _details(error: BaseException) -> str:
    if isinstance(error, InferenceServerException):
        return str(error.message() or error)
    if isinstance(error, grpc.RpcError):
        details = getattr(error, "details", None)
        if callable(details):
            return str(details())
    return str(error)


def translate(error: BaseException, *, context: str = "") -> RerankerError:
    """The ``RerankerError`` for a tritonclient/gRPC failure; raise it ``from error``."""
    code = status_code(error)
    cls = _BY_CODE.get(code, ServerError) if code is not None else ServerError
    if is_shed(error):
        cls = OverloadedError
    prefix = f"{context}: " if context else ""
    name = code.name if code is not None else "client error"
    return cls(f"{prefix}{name}: {_details(error)}", code=code)
