"""What the sync and the asyncio client share: options, request codec, deadlines, retry bookkeeping."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from .config import (
    DOCUMENTS,
    ENSEMBLE_NAME,
    MAX_DOCUMENTS_PARAMETER,
    QUERY,
    SCORES,
    TOKENIZER_MODEL_NAME,
    AdaptiveThrottle,
    ChannelArgs,
    Compression,
    LoadBalancing,
    RetryBudget,
    RetryPolicy,
    TLSConfig,
    channel_args,
)
from .errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotReadyError,
    OverloadedError,
    RerankerError,
    ServerError,
    ServerUnavailableError,
    is_shed,
    is_stub_failure,
    translate,
)
from .ranking import RerankResult, check_texts, rank, sigmoid

log = logging.getLogger("reranker_client")

DEFAULT_TIMEOUT_S = 10.0

# Share of an attempt's remaining time it may wait in Triton's queues, sent as the request's
# timeout: the rest is left to compute the answer, since a request that waited its whole deadline
# would be computed for a caller who has gone.
QUEUE_SHARE = 0.8

# What a tritonclient call can raise for a failed RPC (it converts grpc.RpcError itself).
RPC_ERRORS = (InferenceServerException, grpc.RpcError)

# The canary: the smallest request that goes through every step of the ensemble.
CANARY_QUERY = "health check"
CANARY_DOCUMENTS = ("a canary document scored by every step of the reranker",)


@dataclass(frozen=True)
class CanaryResult:
    """One canary rerank: whether it came back with a finite score, how long it took, and why not."""

    healthy: bool
    seconds: float
    error: str | None = None


def canary_inputs() -> list[grpcclient.InferInput]:
    query, documents = encode(CANARY_QUERY, CANARY_DOCUMENTS)
    return build_inputs(query, documents)


def canary_result(scores: npt.NDArray[np.floating[Any]] | None, started: float, error: str | None) -> CanaryResult:
    seconds = time.monotonic() - started
    if error is None and (scores is None or scores.shape != (len(CANARY_DOCUMENTS),) or not np.isfinite(scores).all()):
        error = f"the canary came back without a finite score: {scores!r}"
    return CanaryResult(healthy=error is None, seconds=seconds, error=error)


class Deadline:
    """A point on the monotonic clock that every attempt and backoff of one call must respect."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.start = time.monotonic()
        self.end = self.start + timeout_s

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class EventWindow:
    """Times of events over the last ``seconds`` seconds (the caller holds the lock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._times: deque[float] = deque()

    def _forget(self, now: float) -> None:
        horizon = now - self.seconds
        while self._times and self._times[0] < horizon:
            self._times.popleft()

    def count(self, now: float) -> int:
        self._forget(now)
        return len(self._times)

    def add(self, now: float) -> None:
        self._forget(now)  # also when nobody counts: a long-lived client must not grow
        self._times.append(now)


class RetryBudgetState:
    """One client's requests and retries over the budget's sliding window (thread-safe)."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self._requests = EventWindow(budget.window_s)
        self._retries = EventWindow(budget.window_s)
        self._lock = threading.Lock()

    def record_request(self) -> None:
        with self._lock:
            self._requests.add(time.monotonic())

    def try_retry(self) -> bool:
        """Take one retry from the budget; ``False`` when the window has none left."""
        with self._lock:
            now = time.monotonic()
            if not self.budget.allows(self._requests.count(now), self._retries.count(now)):
                return False
            self._retries.add(now)
            return True


class ThrottleState:
    """One client's attempts in flight, and its attempts, the server's accepts and its own
    refusals over the throttle's window (thread-safe).

    A call is admitted or refused once, before anything is sent (``admit``); every attempt it
    then makes, split parts and retries included, is tracked (``start``/``finish``) and feeds
    the counts, but is never refused half-way.
    """

    def __init__(
        self, throttle: AdaptiveThrottle, rng: random.Random, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.throttle = throttle
        self.rng = rng
        self.clock = clock
        self._requests = EventWindow(throttle.window_s)
        self._accepts = EventWindow(throttle.window_s)
        self._refused = EventWindow(throttle.window_s)
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self) -> str | None:
        """``None`` to send the call, or why the client refuses it (it then counts as an
        attempt that was refused, and nothing is sent)."""
        with self._lock:
            now = self.clock()
            requests, accepts = self._requests.count(now), self._accepts.count(now)
            # A client with nothing in flight cannot be adding to a backlog: its first request
            # after a burst goes out, whatever the burst left in the window.
            if self._in_flight == 0 or self.rng.random() >= self.throttle.refusal_probability(requests, accepts):
                return None
            refused_here = self._refused.count(now)
            self._requests.add(now)
            self._refused.add(now)
        return (
            f"the server accepted {accepts} of this client's last {requests} attempts "
            f"({refused_here} of them refused by the client itself) in {self.throttle.window_s:g} s, "
            "so the client refused this one without sending it (RetryPolicy.throttle)"
        )

    def start(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finish(self, *, accepted: bool | None) -> None:
        """A started attempt ended: ``accepted`` by the server, refused for overload (``False``),
        or neither (no server, a dead stub, cancelled by the caller: ``None``, not counted)."""
        with self._lock:
            self._in_flight -= 1
            if accepted is None:
                return
            now = self.clock()
            self._requests.add(now)
            if accepted:
                self._accepts.add(now)


def _accepted(error: BaseException, mapped: RerankerError) -> bool | None:
    """What a failed attempt tells the throttle: the server refused it for overload (``False``),
    the server answered, if only to reject the input (``True``), or nothing (``None``: nobody
    answered, or a stub died; a restart is not an overload)."""
    if is_shed(error) or isinstance(mapped, DeadlineExceededError):
        return False
    if isinstance(mapped, ServerUnavailableError) or is_stub_failure(error):
        return None
    return True


class RetryState:
    """Bookkeeping for one request's attempts; the sync and async loops only differ in how they wait."""

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: Deadline,
        what: str,
        rng: random.Random,
        budget: RetryBudgetState | None = None,
        throttle: ThrottleState | None = None,
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        self.what = what
        self.rng = rng
        self.budget = budget
        self.throttle = throttle
        self.attempts = 0

    def attempt_timeout(self) -> float:
        """Seconds the next attempt may take; raises when the deadline has already passed.

        From here the attempt is under way: the caller ends it with exactly one of
        ``on_success``, ``on_error`` or ``on_abandoned``.
        """
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"{self.what}: deadline of {self.deadline.timeout_s:g} s passed before the request was sent",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        if self.attempts == 0 and self.budget is not None:
            self.budget.record_request()
        if self.throttle is not None:
            self.throttle.start()
        self.attempts += 1
        return remaining

    def on_success(self) -> None:
        if self.throttle is not None:
            self.throttle.finish(accepted=True)

    def on_abandoned(self) -> None:
        """The attempt was cancelled (or failed outside gRPC): nothing to learn from it."""
        if self.throttle is not None:
            self.throttle.finish(accepted=None)

    def transient(self, error: BaseException, mapped: RerankerError) -> bool:
        return isinstance(mapped, ServerUnavailableError) or (
            self.policy.retry_stub_failures and is_stub_failure(error)
        )

    def on_error(self, error: BaseException) -> tuple[RerankerError, float | None]:
        """The mapped error, and the delay before retrying (``None``: raise the error now)."""
        mapped = translate(error, context=self.what)
        if self.throttle is not None:
            self.throttle.finish(accepted=_accepted(error, mapped))
        if not self.transient(error, mapped):
            return mapped, None
        delay = self.policy.backoff_s(self.attempts, self.rng)
        why = ""
        if not self.policy.allows(self.attempts):
            why = "retries exhausted"
        elif delay >= self.deadline.remaining():
            why = "no time left before the deadline"
        elif self.budget is not None and is_shed(error) and not self.budget.try_retry():
            # Only a shed spends the budget: it guards servers that refuse work for lack of
            # capacity. A refused connection or a dead stub's INTERNAL cost nobody anything, and
            # under round_robin their retry goes to another replica (or waits for a restart).
            why = "the client's retry budget is spent"
        if not why:
            name = mapped.code.name if mapped.code is not None else "error"
            log.info("%s: %s on attempt %d, retrying in %.3f s", self.what, name, self.attempts, delay)
            return mapped, delay
        gave_up = type(mapped)(
            f"{mapped} (gave up after {self.attempts} attempt(s) in {self.deadline.elapsed():.2f} s: {why})",
            code=mapped.code,
        )
        return gave_up, None


class ClientCore:
    """Options and the request/response codec, free of I/O."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        limits_model: str,
        timeout: float,
        tls: TLSConfig | None,
        retries: RetryPolicy,
        compression: Compression,
        load_balancing: LoadBalancing,
        max_documents: int | None,
        headers: Mapping[str, str] | None,
        channel_args: ChannelArgs | None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_documents is not None and max_documents < 1:
            raise ValueError(f"max_documents must be >= 1, got {max_documents}")
        self.url = url
        self.model = model
        self.limits_model = limits_model
        self.timeout = timeout
        self.tls = tls
        self.retries = retries
        self.compression = compression
        self.load_balancing = load_balancing
        self.max_documents_override = max_documents
        self.headers = dict(headers) if headers else None
        self.extra_channel_args = channel_args
        self.rng = random.Random()
        self.retry_budget = RetryBudgetState(retries.budget) if retries.budget is not None else None
        self.throttle = ThrottleState(retries.throttle, self.rng) if retries.throttle is not None else None
        self.outputs = [grpcclient.InferRequestedOutput(SCORES)]

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for tritonclient's (sync or aio) ``InferenceServerClient``."""
        kwargs: dict[str, Any] = {
            "channel_args": channel_args(
                load_balancing=self.load_balancing,
                retries=self.retries,
                tls=self.tls,
                extra=self.extra_channel_args,
            )
        }
        if self.tls is not None:
            kwargs.update(
                ssl=True,
                root_certificates=self.tls.root_certificates,
                private_key=self.tls.private_key,
                certificate_chain=self.tls.certificate_chain,
            )
        return kwargs

    def deadline(self, timeout: float | None) -> Deadline:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return Deadline(self.timeout if timeout is None else timeout)

    def infer_kwargs(
        self, inputs: list[grpcclient.InferInput], attempt_timeout: float, *, priority: int = 0
    ) -> dict[str, Any]:
        """``priority`` 0 leaves the model's default level; the canary asks for ``CANARY_PRIORITY``."""
        return {
            "priority": priority,
            "model_name": self.model,
            "inputs": inputs,
            "outputs": self.outputs,
            "client_timeout": attempt_timeout,
            # Triton drops the request from its queues once this has passed (queue policy with
            # allow_timeout_override), instead of computing an answer nobody waits for.
            "timeout": max(1, int(attempt_timeout * QUEUE_SHARE * 1_000_000)),
            "headers": self.headers,
            "compression_algorithm": self.compression.algorithm,
        }

    def admit(self, what: str) -> None:
        """Raise ``OverloadedError`` (found on the client side: ``code`` None) when the throttle
        refuses this call; once per call, before it is split or sent."""
        refused = self.throttle.admit() if self.throttle is not None else None
        if refused is not None:
            raise OverloadedError(f"{what}: {refused}", code=None)

    def retry_state(self, deadline: Deadline, what: str, *, retry: bool = True) -> RetryState:
        """``retry=False``: one attempt, nothing taken from the budget (health checks)."""
        if not retry:
            return RetryState(RetryPolicy.disabled(), deadline, what, self.rng)
        return RetryState(self.retries, deadline, what, self.rng, self.retry_budget, self.throttle)

    def describe(self, what: str) -> str:
        return f"{what} {self.model!r} at {self.url}"


def prepare(query: object, documents: object) -> list[str]:
    """Validate types (``TypeError``) before any network work."""
    return check_texts(query, documents)


def _encode(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot travel as UTF-8
        raise InvalidInputError(f"{what} is not valid Unicode text: {exc}") from exc


def encode(query: str, documents: Sequence[str]) -> tuple[bytes, list[bytes]]:
    """UTF-8 bytes of the query and documents, before any network work (``InvalidInputError``)."""
    return _encode(query, "query"), [_encode(document, "a document") for document in documents]


def build_inputs(query: bytes, documents: Sequence[bytes]) -> list[grpcclient.InferInput]:
    """The ``query`` [1] and ``documents`` [N] BYTES tensors of one ensemble request."""
    query_tensor = grpcclient.InferInput(QUERY, [1], "BYTES")
    query_tensor.set_data_from_numpy(np.array([query], dtype=np.object_))
    # np.empty + slice assignment: np.array would try to read a list of bytes as a 2-D array.
    encoded = np.empty(len(documents), dtype=np.object_)
    encoded[:] = documents
    documents_tensor = grpcclient.InferInput(DOCUMENTS, [len(documents)], "BYTES")
    documents_tensor.set_data_from_numpy(encoded)
    return [query_tensor, documents_tensor]


def decode_scores(result: grpcclient.InferResult, expected: int) -> npt.NDArray[np.float32]:
    """The ``scores`` output as float32 [N], checked against the number of documents sent."""
    scores = result.as_numpy(SCORES)
    if scores is None:
        raise ServerError(f"the response has no {SCORES!r} output")
    if scores.shape != (expected,):
        raise ServerError(f"expected {SCORES!r} of shape ({expected},), got {scores.shape}")
    return scores.astype(np.float32, copy=False)


def parse_max_documents(config: model_config_pb2.ModelConfig) -> int | None:
    """The server's documents-per-request limit from the tokenizer's config, ``None`` if it has none."""
    parameter = config.parameters.get(MAX_DOCUMENTS_PARAMETER)
    if parameter is None or not parameter.string_value:
        return None
    try:
        value = int(parameter.string_value)
    except ValueError as exc:
        raise ServerError(
            f"model {config.name!r} has a non-integer {MAX_DOCUMENTS_PARAMETER!r}: {parameter.string_value!r}"
        ) from exc
    if value < 1:
        raise ServerError(f"model {config.name!r} has {MAX_DOCUMENTS_PARAMETER}={value}")
    return value


def finish_scores(raw: npt.NDArray[np.float32], normalize: bool) -> npt.NDArray[np.floating[Any]]:
    return sigmoid(raw) if normalize else raw


def finish_rerank(
    raw: npt.NDArray[np.float32],
    documents: Sequence[str],
    *,
    top_n: int | None,
    normalize: bool,
    return_documents: bool,
) -> list[RerankResult]:
    values = finish_scores(raw, normalize)
    return rank(values, documents if return_documents else None, top_n=top_n)


def check_top_n(top_n: int | None) -> None:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
        raise ValueError(f"top_n must be a non-negative int or None, got {top_n!r}")


def merge(parts: Iterable[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    chunks = list(parts)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def unreachable(exc: BaseException, what: str) -> bool:
    """``False`` for a health probe that could not reach the server; raise any other failure."""
    error = translate(exc, context=what)
    if isinstance(error, (ServerUnavailableError, DeadlineExceededError)):
        return False
    raise error from exc


def not_ready_error(core: ClientCore, reachable: bool, deadline: Deadline) -> RerankerError:
    if reachable:
        return ModelNotReadyError(f"model {core.model!r} at {core.url} not ready after {deadline.elapsed():.1f} s")
    return ServerUnavailableError(f"server {core.url} not reachable after {deadline.elapsed():.1f} s")


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENSEMBLE_NAME",
    "RPC_ERRORS",
    "TOKENIZER_MODEL_NAME",
    "ClientCore",
    "Deadline",
    "RetryState",
    "build_inputs",
    "check_top_n",
    "decode_scores",
    "encode",
    "finish_rerank",
    "finish_scores",
    "merge",
    "not_ready_error",
    "parse_max_documents",
    "prepare",
    "unreachable",
]
