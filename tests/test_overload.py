"""Overload against a real Triton: bounded queues shed at once, the caller's deadline travels and
expired work is not computed, and the client's retry budget caps its attempts. (That the model
step skips the rows of an abandoned request is tested on the step itself, in test_steps.py.)

The server here has small queues and a slow model step (one row per onnxruntime run, long
documents) so that a burst of a few dozen requests is an overload on any machine. Assertions
are on outcomes and counters (Triton's statistics, the steps' own metrics), never on times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from reranker_client import (
    AdaptiveThrottle,
    AsyncRerankerClient,
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    RerankerClient,
    RerankerError,
    RetryBudget,
    RetryPolicy,
    ServerUnavailableError,
)
from reranker_client._core import Deadline, RetryBudgetState, RetryState, ThrottleState
from reranker_client.config import CORE_MODEL_NAME, TOKENIZER_MODEL_NAME
from reranker_client.errors import is_shed, is_stub_failure, translate
from reranker_export.settings import QueueSettings
from reranker_export.testmodels import long_document
from support import rerender_cpu_repository

QUERY = "Which team won the football match on Sunday?"
DOCUMENTS = [long_document(120 + i) for i in range(48)]  # every pair fills the 128-token budget
QUEUE_SIZE = 16


@pytest.fixture(scope="module")
def overload_server(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from reranker_serve import TritonServer

    repository = rerender_cpu_repository(
        cpu_repository,
        tmp_path_factory.mktemp("repos") / "overload",
        queue=QueueSettings(max_queue_size=QUEUE_SIZE),
        cpu_sub_batch_rows=1,
        max_queue_delay_us=0,
    )
    server = TritonServer(repository, log_file=tmp_path_factory.mktemp("logs") / "triton.log").start()
    try:
        yield server
    finally:
        server.stop()


def _metrics(server: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of Triton's metrics endpoint (its own and the steps' custom metrics), by name
    without the ``_total`` that the parser adds to (or keeps on) counters."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name.removesuffix("_total"), tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in metrics.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def _solo(server: Any) -> np.ndarray:
    with RerankerClient(server.grpc_url, timeout=60) as client:
        return client.score(QUERY, DOCUMENTS)


# -- classification and the budget, without a server ------------------------------------------------


def test_shed_and_stub_failures_are_told_apart_from_other_errors() -> None:
    shed = InferenceServerException("in ensemble 'reranker', Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
    expired = InferenceServerException("in ensemble 'reranker', Request timeout expired", "StatusCode.UNAVAILABLE")
    down = InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
    stub = InferenceServerException("Stub process 'reranker_model_0_0' is not healthy.", "StatusCode.INTERNAL")
    bug = InferenceServerException("reranker_model failed: ValueError: boom", "StatusCode.INTERNAL")
    assert is_shed(shed) and is_shed(expired) and not is_shed(down)
    assert isinstance(translate(shed), OverloadedError) and isinstance(translate(expired), OverloadedError)
    assert type(translate(down)) is ServerUnavailableError
    assert is_stub_failure(stub) and not is_stub_failure(bug) and not is_stub_failure(shed)


def test_retry_budget_allows_the_floor_then_a_share_of_the_requests() -> None:
    budget = RetryBudget(ratio=0.1, min_retries=2, window_s=60)
    assert budget.allows(requests=0, retries=1) and not budget.allows(requests=0, retries=2)
    assert budget.allows(requests=100, retries=9) and not budget.allows(requests=100, retries=10)
    state = RetryBudgetState(budget)
    for _ in range(30):
        state.record_request()
    granted = sum(state.try_retry() for _ in range(50))
    assert granted == 3  # 10% of 30 requests, above the floor of 2
    for bad in ({"ratio": -0.1}, {"min_retries": -1}, {"window_s": 0}):
        with pytest.raises(ValueError):
            RetryBudget(**bad)


def test_only_sheds_spend_the_retry_budget() -> None:
    """A zombie replica's INTERNAL and a refused connection are retried with the budget spent;
    a shed is not."""
    import random

    from reranker_client._core import Deadline, RetryState

    policy = RetryPolicy(budget=RetryBudget(ratio=0.0, min_retries=0))
    budget = RetryBudgetState(policy.budget)  # type: ignore[arg-type]
    stub = InferenceServerException("Stub process 'reranker_model_0_0' is not healthy.", "StatusCode.INTERNAL")
    shed = InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
    down = InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
    for error, retried in ((stub, True), (down, True), (shed, False)):
        state = RetryState(policy, Deadline(30), "infer", random.Random(0), budget)
        state.attempt_timeout()
        mapped, delay = state.on_error(error)
        assert (delay is not None) is retried, error
    assert "retry budget is spent" in str(mapped)
    no_stub_retries = RetryPolicy(retry_stub_failures=False)
    state = RetryState(no_stub_retries, Deadline(30), "infer", random.Random(0))
    state.attempt_timeout()
    assert state.on_error(stub)[1] is None


def test_the_throttle_refuses_nothing_while_the_server_accepts_enough() -> None:
    throttle = AdaptiveThrottle(multiplier=2.0)
    assert throttle.refusal_probability(requests=0, accepts=0) == 0
    assert throttle.refusal_probability(requests=100, accepts=50) == 0  # half accepted: still sent
    # A quarter accepted: about half of the attempts are refused here, so the server sees about
    # twice what it accepts.
    assert throttle.refusal_probability(requests=100, accepts=25) == pytest.approx(50 / 101)
    assert throttle.refusal_probability(requests=100, accepts=0) == pytest.approx(100 / 101)
    for bad in ({"multiplier": 0.5}, {"window_s": 0}):
        with pytest.raises(ValueError):
            AdaptiveThrottle(**bad)  # type: ignore[arg-type]


def test_only_sheds_and_deadline_misses_count_against_the_server() -> None:
    """Sheds and deadline misses make the client refuse calls itself; a refused connection or a
    dead stub does not (a restarting server is not an overloaded one), whether or not stub
    failures are retried, and an answer, even a rejection of the input, counts as accepted."""
    import random

    shed = InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
    late = InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")
    down = InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
    stub = InferenceServerException("Stub process 'reranker_model_0_0' is not healthy.", "StatusCode.INTERNAL")
    invalid = InferenceServerException("too many documents", "StatusCode.INVALID_ARGUMENT")

    def refused_after(errors: list[InferenceServerException], *, answers: int = 0, stub_retries: bool = True) -> int:
        throttle = AdaptiveThrottle(window_s=600)
        policy = RetryPolicy(max_attempts=1, budget=None, throttle=throttle, retry_stub_failures=stub_retries)
        state = ThrottleState(throttle, random.Random(0))
        state.start()  # one long call stays in flight throughout
        for outcome in [None] * answers + errors:
            attempt = RetryState(policy, Deadline(30), "infer", random.Random(0), throttle=state)
            attempt.attempt_timeout()
            if outcome is None:
                attempt.on_success()
            else:
                attempt.on_error(outcome)
        assert state.in_flight == 1
        return sum(state.admit() is not None for _ in range(100))

    assert refused_after([down, stub] * 50) == 0
    assert refused_after([invalid] * 100) == 0
    assert refused_after([shed] * 50, answers=100) == 0  # two in three accepted
    assert refused_after([shed] * 100) > 90  # nothing accepted: almost every call refused
    assert refused_after([late] * 100) > 90
    # Failures that count neither way do not dilute the sheds.
    assert refused_after([down, stub] * 35 + [shed] * 30) > 90
    assert refused_after([stub] * 70 + [shed] * 30, stub_retries=False) > 90
    assert 10 < refused_after([shed] * 75, answers=25) < 90  # a quarter accepted: about half refused


def test_the_throttle_forgets_after_its_window_and_spares_an_idle_client() -> None:
    import random

    now = [0.0]
    state = ThrottleState(AdaptiveThrottle(window_s=3), random.Random(0), clock=lambda: now[0])
    for _ in range(100):
        assert state.admit() is None  # nothing else in flight: sent, whatever the window holds
        state.start()
        state.finish(accepted=False)
    state.start()  # one call in flight from here on
    reasons = [state.admit() for _ in range(20)]
    assert sum(reason is not None for reason in reasons) > 15
    refusal = next(reason for reason in reasons if reason is not None)
    assert "accepted 0 of this client's last 100 attempts (0 of them refused by the client itself)" in refusal
    assert "without sending it (RetryPolicy.throttle)" in refusal
    now[0] += 3.5  # past the window: forgotten
    assert [state.admit() for _ in range(20)] == [None] * 20
    for _ in range(20):
        state.start()
        state.finish(accepted=None)  # cancelled: not counted either way
    assert all(state.admit() is None for _ in range(20))


class _Call:
    """Stands in for one gRPC call: answers, sheds, rejects the input, fails outside gRPC, or
    hangs (to be cancelled)."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes = list(outcomes)

    def error(self) -> BaseException | None:
        outcome = self.outcomes.pop(0)
        return {
            "ok": None,
            "shed": InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE"),
            "invalid": InferenceServerException("too many documents", "StatusCode.INVALID_ARGUMENT"),
            "bug": ValueError("not a gRPC failure"),
        }[outcome]


@pytest.mark.parametrize(
    "outcomes",
    [["ok"], ["shed", "ok"], ["shed", "shed", "shed"], ["invalid"], ["bug"], ["hang"]],
    ids=["answered", "retried", "retries-exhausted", "rejected", "non-grpc-error", "cancelled"],
)
def test_every_attempt_leaves_the_throttles_in_flight_count(outcomes: list[str]) -> None:
    """Whatever ends an attempt (an answer, a shed retried or raised, a rejected input, an error
    outside gRPC, the caller's cancellation), the client's in-flight count comes back to zero in
    both clients, so the "nothing in flight always sends" rule keeps working."""
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.001, budget=None)
    sync_client = RerankerClient("127.0.0.1:1", retries=policy)

    def sync_call(_: float) -> str:
        if outcomes == ["hang"]:
            raise KeyboardInterrupt  # what interrupts a blocking call in the sync client
        error = calls.error()
        if error is not None:
            raise error
        return "answer"

    async def async_call(_: float) -> str:
        if outcomes == ["hang"]:
            await asyncio.sleep(3600)
        error = calls.error()
        if error is not None:
            raise error
        return "answer"

    calls = _Call(outcomes)
    with contextlib.suppress(RerankerError, ValueError, KeyboardInterrupt):
        sync_client._retrying(sync_call, Deadline(30), "infer")
    assert sync_client._core.throttle is not None and sync_client._core.throttle.in_flight == 0
    sync_client.close()

    async def run() -> int:
        async with AsyncRerankerClient("127.0.0.1:1", retries=policy) as client:
            task = asyncio.ensure_future(client._retrying(async_call, Deadline(30), "infer"))
            if outcomes == ["hang"]:
                await asyncio.sleep(0.01)
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert client._core.throttle is not None
            return client._core.throttle.in_flight

    calls = _Call(outcomes)
    assert asyncio.run(run()) == 0


# -- against the overloaded server ------------------------------------------------------------------


def test_a_full_queue_sheds_at_once_with_overloaded_error(overload_server: Any) -> None:
    expected = _solo(overload_server)

    async def burst() -> tuple[list[Any], list[str]]:
        finished: list[str] = []
        async with AsyncRerankerClient(overload_server.grpc_url, timeout=120, retries=RetryPolicy.disabled()) as c:

            async def one() -> Any:
                try:
                    scores = await c.score(QUERY, DOCUMENTS)
                except OverloadedError as exc:
                    finished.append("shed")
                    return exc
                finished.append("ok")
                return scores

            return list(await asyncio.gather(*(one() for _ in range(3 * QUEUE_SIZE)))), finished

    results, finished = asyncio.run(burst())
    shed = [r for r in results if isinstance(r, OverloadedError)]
    answered = [r for r in results if isinstance(r, np.ndarray)]
    assert shed and answered and len(shed) + len(answered) == 3 * QUEUE_SIZE
    for error in shed:
        assert error.code is grpc.StatusCode.UNAVAILABLE and "Exceeds maximum queue size" in str(error)
        assert isinstance(error, ServerUnavailableError)  # the documented tree: a kind of unavailability
    for scores in answered:
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    # A shed answers at once, not after waiting its turn: the first refusal came back before the
    # admitted requests had all been computed.
    assert finished.index("shed") < len(finished) - 1 - finished[::-1].index("ok")
    with RerankerClient(overload_server.grpc_url, timeout=60) as client:
        assert client.canary().healthy


def test_the_callers_deadline_travels_and_expired_work_is_not_computed(overload_server: Any) -> None:
    before = _metrics(overload_server)

    async def callers() -> list[Any]:
        # As many callers as the queue holds (none is refused for a full queue), each with a
        # deadline shorter than the queue's work: the later ones wait past their deadline, and
        # the server must drop them instead of computing answers nobody reads.
        async with AsyncRerankerClient(overload_server.grpc_url, timeout=0.25, retries=RetryPolicy.disabled()) as c:

            async def one() -> Any:
                try:
                    return await c.score(QUERY, DOCUMENTS)
                except (OverloadedError, DeadlineExceededError) as exc:
                    return exc

            return list(await asyncio.gather(*(one() for _ in range(QUEUE_SIZE))))

    results = asyncio.run(callers())
    answered = sum(isinstance(r, np.ndarray) for r in results)
    failed = [r for r in results if not isinstance(r, np.ndarray)]
    assert failed, "the backlog should outlast a 0.25 s deadline on a model this slow"

    def dropped(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
        # Requests whose deadline passed, dropped from a step's queue by Triton (on a slow machine
        # already at the tokenizer's) or mid-way by the step.
        return sum(
            _total(metrics, name, **labels) - _total(before, name, **labels)
            for step in (TOKENIZER_MODEL_NAME, CORE_MODEL_NAME)
            for name, labels in (
                ("nv_inference_request_failure", {"model": step, "reason": "REJECTED"}),
                ("reranker_requests_abandoned", {"step": step}),
            )
        )

    # Triton counts a request after answering it: read until the count is there (or give up).
    after = _metrics(overload_server)
    for _ in range(100):
        if dropped(after) >= 1:
            break
        threading.Event().wait(0.1)
        after = _metrics(overload_server)
    assert dropped(after) >= 1
    rows = _total(after, "reranker_rows_scored", step=CORE_MODEL_NAME) - _total(
        before, "reranker_rows_scored", step=CORE_MODEL_NAME
    )
    # Work for callers who had gone was not done: fewer rows than the requests held. (Not
    # "only the answered ones": each step's queue counts the timeout from its own start, so a
    # request can still be dequeued just in time and finish after its caller gave up.)
    assert answered * len(DOCUMENTS) <= rows < len(results) * len(DOCUMENTS)


def test_a_throttled_client_refuses_at_once_what_the_server_would_shed(overload_server: Any) -> None:
    """Once the server has shed most of a client's burst, the client refuses part of the next
    burst itself, without sending it; the rest is answered right, and a request sent after the
    load (nothing else in flight) goes out and is answered."""
    expected = _solo(overload_server)
    policy = RetryPolicy(max_attempts=1, budget=None, throttle=AdaptiveThrottle(window_s=600))

    async def run() -> tuple[list[list[Any]], int, Any]:
        async with AsyncRerankerClient(overload_server.grpc_url, timeout=120, retries=policy) as client:
            sent = 0
            infer = client._triton.infer

            async def counted(*args: Any, **kwargs: Any) -> Any:
                nonlocal sent
                sent += 1
                return await infer(*args, **kwargs)

            client._triton.infer = counted  # type: ignore[method-assign]  # a count of what reached the wire
            bursts = []
            for _ in range(2):
                calls = (client.score(QUERY, DOCUMENTS) for _ in range(4 * QUEUE_SIZE))
                bursts.append(list(await asyncio.gather(*calls, return_exceptions=True)))
            last = await client.score(QUERY, DOCUMENTS)
            return bursts, sent, last

    (first, second), sent, after = asyncio.run(run())

    def local(result: Any) -> bool:
        return isinstance(result, OverloadedError) and "without sending it" in str(result)

    server_shed = [r for r in first if isinstance(r, OverloadedError) and not local(r)]
    assert server_shed, "the first burst should be shed in part by the server"
    assert sum(local(r) for r in second) > 0
    refused = sum(local(r) for r in first + second)
    assert sent == len(first) + len(second) - refused + 1  # the refused ones never reached the server
    for result in first + second:
        assert isinstance(result, (np.ndarray, OverloadedError)), result
        if isinstance(result, np.ndarray):
            np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    with RerankerClient(overload_server.grpc_url, timeout=60) as client:
        assert client.canary().healthy


def test_the_retry_budget_caps_attempts(overload_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A client whose requests are shed retries, but adds at most its budget in attempts."""
    caplog.set_level(logging.INFO, logger="reranker_client")
    requests = 4 * QUEUE_SIZE  # more than both steps' queues and instances hold: many are shed
    budget = RetryBudget(ratio=0.1, min_retries=2, window_s=600)

    def retries(policy: RetryPolicy) -> int:
        caplog.clear()

        async def burst() -> None:
            async with AsyncRerankerClient(overload_server.grpc_url, timeout=3.0, retries=policy) as c:
                await asyncio.gather(*(c.score(QUERY, DOCUMENTS) for _ in range(requests)), return_exceptions=True)

        asyncio.run(burst())
        # (Triton's own request counts cannot tell: it counts a request its queue refused twice.)
        return sum("retrying in" in record.getMessage() for record in caplog.records)

    capped = retries(RetryPolicy(budget=budget, throttle=None))
    assert 1 <= capped <= math.ceil(max(budget.min_retries, budget.ratio * requests))
    assert retries(RetryPolicy(budget=None, throttle=None)) > capped  # without a budget the same burst retries more


def test_invalid_input_is_never_retried(overload_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reranker_client")
    # The client believes the server takes 200 documents; the server's limit is 64.
    with (
        RerankerClient(overload_server.grpc_url, timeout=30, max_documents=200) as client,
        pytest.raises(InvalidInputError) as raised,
    ):
        client.score(QUERY, ["a document"] * 100)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    # (A shed before it, from the burst of an earlier test, may be retried; the rejection not.)
    assert not [r for r in caplog.records if "INVALID_ARGUMENT on attempt" in r.getMessage()]
    assert "gave up" not in str(raised.value)


def test_the_canary_jumps_the_queue_of_a_busy_server(overload_server: Any) -> None:
    """A liveness probe must not fail because the server is busy: the canary is served first."""

    async def run() -> tuple[bool, int]:
        async with AsyncRerankerClient(overload_server.grpc_url, timeout=120, retries=RetryPolicy.disabled()) as c:
            backlog = [asyncio.ensure_future(c.score(QUERY, DOCUMENTS)) for _ in range(QUEUE_SIZE)]
            await asyncio.sleep(0)  # the backlog is sent first
            result = await c.canary(timeout=60)
            pending = sum(not task.done() for task in backlog)
            await asyncio.gather(*backlog, return_exceptions=True)
            return result.healthy, pending

    healthy, pending = asyncio.run(run())
    assert healthy
    # It came back while most of the backlog, sent before it, still waited.
    assert pending >= QUEUE_SIZE // 2
