"""Blocking client: ``RerankerClient``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient

from . import _core
from ._core import DEFAULT_TIMEOUT_S, RPC_ERRORS, CanaryResult, ClientCore, Deadline
from .config import (
    CANARY_PRIORITY,
    ENSEMBLE_NAME,
    TOKENIZER_MODEL_NAME,
    ChannelArgs,
    Compression,
    LoadBalancing,
    RetryPolicy,
    TLSConfig,
)
from .errors import RerankerError
from .ranking import RerankResult, chunk_slices

T = TypeVar("T")


class RerankerClient:
    """Blocking gRPC client for the ``reranker`` ensemble on Triton.

    ``url`` is a gRPC target: ``host:port``, or ``dns:///host:port`` to spread requests over every
    address the name resolves to (e.g. a Kubernetes headless Service) with ``round_robin``.
    ``timeout`` is the default deadline of one call, retries and split requests included.
    The client is thread-safe; use one per process and close it (or use it as a context manager).
    """

    def __init__(
        self,
        url: str,
        *,
        model: str = ENSEMBLE_NAME,
        limits_model: str = TOKENIZER_MODEL_NAME,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: TLSConfig | None = None,
        retries: RetryPolicy | None = None,
        compression: Compression = Compression.NONE,
        load_balancing: LoadBalancing = LoadBalancing.ROUND_ROBIN,
        max_documents: int | None = None,
        max_concurrent_requests: int = 8,
        headers: Mapping[str, str] | None = None,
        channel_args: ChannelArgs | None = None,
    ) -> None:
        if max_concurrent_requests < 1:
            raise ValueError(f"max_concurrent_requests must be >= 1, got {max_concurrent_requests}")
        self._core = ClientCore(
            url,
            model=model,
            limits_model=limits_model,
            timeout=timeout,
            tls=tls,
            retries=retries if retries is not None else RetryPolicy(),
            compression=compression,
            load_balancing=load_balancing,
            max_documents=max_documents,
            headers=headers,
            channel_args=channel_args,
        )
        self._triton = grpcclient.InferenceServerClient(url, **self._core.connection_kwargs())
        self._max_concurrent = max_concurrent_requests
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._limit_lock = threading.Lock()
        self._limit: int | None = None
        self._limit_known = max_documents is not None
        if max_documents is not None:
            self._limit = max_documents
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RerankerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and the worker threads; later calls fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._triton.close()

    @property
    def url(self) -> str:
        return self._core.url

    @property
    def model(self) -> str:
        return self._core.model

    # -- ranking -----------------------------------------------------------------------------

    def rerank(
        self,
        query: str,
        documents: Iterable[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
        return_documents: bool = False,
        timeout: float | None = None,
    ) -> list[RerankResult]:
        """Rank ``documents`` for ``query``: best first, ties by input index, at most ``top_n``.

        ``normalize=True`` reports ``sigmoid(logit)`` (FlagReranker semantics) instead of the raw logit.
        """
        _core.check_top_n(top_n)
        texts = _core.prepare(query, documents)
        raw = self._scores(query, texts, timeout)
        return _core.finish_rerank(raw, texts, top_n=top_n, normalize=normalize, return_documents=return_documents)

    def score(
        self,
        query: str,
        documents: Iterable[str],
        *,
        normalize: bool = False,
        timeout: float | None = None,
    ) -> npt.NDArray[np.floating]:
        """One score per document, in input order: float32 logits, or float64 sigmoids with ``normalize``."""
        texts = _core.prepare(query, documents)
        return _core.finish_scores(self._scores(query, texts, timeout), normalize)

    def _scores(self, query: str, texts: list[str], timeout: float | None) -> npt.NDArray[np.float32]:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} for {self._core.url} is closed")
        deadline = self._core.deadline(timeout)
        if not texts:
            return np.empty(0, dtype=np.float32)
        encoded_query, encoded = _core.encode(query, texts)
        self._core.admit(self._core.describe("infer"))  # once per call: its parts all go, or none
        parts = chunk_slices(len(texts), self._max_documents(deadline))
        requests = [_core.build_inputs(encoded_query, encoded[part]) for part in parts]
        if len(requests) == 1:
            return self._infer(requests[0], len(texts), deadline)
        executor = self._pool()
        futures: list[Future[npt.NDArray[np.float32]]] = [
            executor.submit(self._infer, inputs, part.stop - part.start, deadline)
            for inputs, part in zip(requests, parts, strict=True)
        ]
        try:
            return _core.merge(future.result() for future in futures)
        finally:
            for future in futures:
                future.cancel()

    def _infer(
        self, inputs: list[grpcclient.InferInput], count: int, deadline: Deadline, *, canary: bool = False
    ) -> npt.NDArray[np.float32]:
        def attempt(attempt_timeout: float) -> grpcclient.InferResult:
            return self._triton.infer(
                **self._core.infer_kwargs(inputs, attempt_timeout, priority=CANARY_PRIORITY if canary else 0)
            )

        result = self._retrying(attempt, deadline, self._core.describe("infer"), retry=not canary)
        return _core.decode_scores(result, count)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_concurrent, thread_name_prefix="reranker-client"
                )
            return self._executor

    def _retrying(self, call: Callable[[float], T], deadline: Deadline, what: str, *, retry: bool = True) -> T:
        state = self._core.retry_state(deadline, what, retry=retry)
        while True:
            attempt_timeout = state.attempt_timeout()
            try:
                result = call(attempt_timeout)
            except RPC_ERRORS as exc:
                error, delay = state.on_error(exc)
                if delay is None:
                    raise error from exc
                time.sleep(delay)
            except BaseException:
                state.on_abandoned()  # cancelled mid-attempt: no outcome to learn from
                raise
            else:
                state.on_success()
                return result

    # -- server limits and health ------------------------------------------------------------

    def max_documents(self, *, timeout: float | None = None) -> int | None:
        """Documents per request the server accepts (read once from the tokenizer's config)."""
        return self._max_documents(self._core.deadline(timeout))

    def _max_documents(self, deadline: Deadline) -> int | None:
        if self._limit_known:
            return self._limit
        with self._limit_lock:
            if not self._limit_known:
                what = f"get_model_config {self._core.limits_model!r} at {self._core.url}"
                response = self._retrying(
                    lambda t: self._triton.get_model_config(
                        self._core.limits_model, headers=self._core.headers, client_timeout=t
                    ),
                    deadline,
                    what,
                )
                self._limit = _core.parse_max_documents(response.config)
                self._limit_known = True
            return self._limit

    def is_live(self, *, timeout: float | None = None) -> bool:
        """Whether the server answers its liveness probe; ``False`` when it cannot be reached."""
        try:
            return bool(
                self._triton.is_server_live(
                    headers=self._core.headers, client_timeout=self._core.deadline(timeout).remaining()
                )
            )
        except RPC_ERRORS as exc:
            return _core.unreachable(exc, self._core.describe("is_live"))

    def canary(self, *, timeout: float | None = None) -> CanaryResult:
        """A deep health check: one tiny rerank through the whole ensemble, within ``timeout``.

        Readiness only says Triton loaded the models; a python step whose stub process died
        still reports ready while every request fails. The canary fails then. It never raises
        for a server-side failure: the result says what went wrong.
        """
        started = time.monotonic()
        try:
            # One attempt, no retry (a probe must see the failure a retry would hide), ahead of the
            # queue (a busy server is not a broken one).
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} for {self._core.url} is closed")
            deadline = self._core.deadline(timeout)
            scores = self._infer(_core.canary_inputs(), len(_core.CANARY_DOCUMENTS), deadline, canary=True)
        except RerankerError as exc:
            return _core.canary_result(None, started, f"{type(exc).__name__}: {exc}")
        return _core.canary_result(scores, started, None)

    def is_ready(self, *, timeout: float | None = None) -> bool:
        """Whether the server and the model are ready; ``False`` when the server cannot be reached."""
        deadline = self._core.deadline(timeout)
        headers = self._core.headers
        try:
            if not self._triton.is_server_ready(headers=headers, client_timeout=deadline.remaining()):
                return False
            return bool(
                self._triton.is_model_ready(
                    self._core.model, headers=headers, client_timeout=max(deadline.remaining(), 0)
                )
            )
        except RPC_ERRORS as exc:
            return _core.unreachable(exc, self._core.describe("is_ready"))

    def wait_until_ready(self, *, timeout: float | None = None) -> None:
        """Poll readiness until the model is ready; raise when ``timeout`` passes first."""
        deadline = self._core.deadline(timeout)
        polls = 0
        while True:
            reachable = self.is_live(timeout=max(deadline.remaining(), 1e-3))
            if reachable and self.is_ready(timeout=max(deadline.remaining(), 1e-3)):
                return
            polls += 1
            delay = self._core.retries.backoff_s(polls, self._core.rng)
            if delay >= deadline.remaining():
                raise _core.not_ready_error(self._core, reachable, deadline)
            time.sleep(delay)
