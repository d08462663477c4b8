"""Chaos against real local servers: two supervised replicas behind the client's round-robin.

Under a steady load of about half the pair's capacity, the stubs of one replica are killed with
SIGKILL (what the kernel's OOM killer does to a python process in a memory-limited pod: the
server stays live and ready while every request fails), and later the other replica's whole
server is killed. The supervisors (``reranker_serve.Supervisor``, default policy) must heal
both within 30 s, and the client (its default retry policy) must hide both: no failure reaches
the caller, and every answer is the one its own request gets alone. Timings come from the supervisors' records.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from reranker_bench.heal import kill_stubs
from reranker_client import LoadBalancing, RerankerClient, RetryPolicy
from reranker_client.config import CORE_MODEL_NAME, TOKENIZER_MODEL_NAME
from reranker_export.testmodels import corpus
from reranker_serve import HealingPolicy, Restart, RestartReason, Supervisor, TritonServer

# The default policy: a dead stub's INTERNAL and a refused connection are retried (on the other
# replica) within the deadline; only sheds spend the retry budget.
RETRIES = RetryPolicy()
HEAL_BOUND_S = 30.0  # the issue's bound: a zombie is serving again within 30 s of the fault
REQUESTS = 48
LOAD_THREADS = 6  # closed-loop callers that measure the capacity
IN_FLIGHT = 32  # the open loop's threads: requests that hang on a zombie must not hold back the rate


def _requests() -> list[tuple[str, list[str]]]:
    """Distinct requests (their own query, documents and document count): a mixed-up answer shows."""
    queries = [entry.text for entry in corpus() if entry.kind == "query"]
    passages = [entry.text for entry in corpus() if entry.kind == "passage"]
    return [
        (queries[i % len(queries)], [passages[(7 * i + j) % len(passages)] for j in range(2 + i % 5)])
        for i in range(REQUESTS)
    ]


@dataclass
class Replica:
    server: TritonServer
    supervisor: Supervisor
    thread: threading.Thread
    log: list[str] = field(default_factory=list)
    crashed: list[BaseException] = field(default_factory=list)


def _supervise(replica: Replica) -> None:
    try:
        replica.supervisor.run()
    except BaseException as error:  # the test asserts there was none
        replica.crashed.append(error)


@pytest.fixture
def replicas(cpu_repository: Path, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two supervised servers on the session's repository, each with its own log."""
    servers = [TritonServer(cpu_repository, log_file=tmp_path / f"triton-{i}.log") for i in range(2)]
    started: list[Replica] = []
    try:
        for number, server in enumerate(servers):
            server.start()
            log: list[str] = []
            supervisor = Supervisor(server, HealingPolicy(), log=log.append)
            replica = Replica(server, supervisor, threading.Thread(target=lambda: None), log)
            replica.thread = threading.Thread(target=_supervise, args=(replica,), name=f"supervisor-{number}")
            replica.thread.start()
            started.append(replica)
        yield started
    finally:
        for replica in started:
            replica.supervisor.stop()
        for replica in started:
            replica.thread.join(timeout=60)
        for server in servers:
            server.stop(grace_s=1.0)  # a server that had a dead stub would wait its exit timeout


class Load:
    """Open-loop load: one request every ``period_s`` from a pool, each answer kept with its request."""

    def __init__(self, client: RerankerClient, requests: list[tuple[str, list[str]]], period_s: float) -> None:
        self.client = client
        self.requests = requests
        self.period_s = period_s
        self.answers: list[tuple[int, np.ndarray]] = []
        self.failures: list[tuple[int, BaseException]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._issue, name="load")

    def _one(self, index: int) -> None:
        query, documents = self.requests[index]
        try:
            self.answers.append((index, self.client.score(query, documents)))
        except Exception as error:  # every failure is a finding, whatever its type
            self.failures.append((index, error))

    def _issue(self) -> None:
        sent = 0
        while not self._stop.wait(self.period_s):  # the pacing of the load, not a synchronisation
            self._pool.submit(self._one, sent % len(self.requests))
            sent += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)


def _capacity(client: RerankerClient, requests: list[tuple[str, list[str]]], seconds: float = 3.0) -> float:
    """Requests per second the two replicas answer under a closed loop of ``LOAD_THREADS`` callers."""
    done = 0
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop(offset: int) -> None:
        nonlocal done
        index = offset
        while time.monotonic() < end:
            query, documents = requests[index % len(requests)]
            client.score(query, documents)
            index += LOAD_THREADS
            with lock:
                done += 1

    began = time.monotonic()
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        list(pool.map(loop, range(LOAD_THREADS)))
    return done / (time.monotonic() - began)


def _healed(replica: Replica, after: float, timeout_s: float = 120.0) -> Restart:
    """The supervisor's first restart record after ``after`` that ended serving (or failed)."""
    deadline, pause = time.monotonic() + timeout_s, threading.Event()
    while True:
        records = [r for r in replica.supervisor.restarts if r.detected_at >= after]
        if records:
            return records[0]
        assert not replica.crashed, replica.crashed
        assert time.monotonic() < deadline, f"no restart within {timeout_s:g} s: {replica.log}"
        pause.wait(0.1)  # a pause between reads of the supervisor's records


def _wait_for_answers(load: Load, count: int) -> None:
    """Until ``count`` more answers came back: the load is flowing through the healed pair."""
    target, pause = len(load.answers) + count, threading.Event()
    deadline = time.monotonic() + 60
    while len(load.answers) + len(load.failures) < target:
        assert time.monotonic() < deadline, "the load stopped flowing"
        pause.wait(0.05)


@pytest.mark.timeout(300)
def test_a_zombie_and_a_killed_server_are_healed_and_clients_see_no_failure(
    replicas: list[Replica], caplog: pytest.LogCaptureFixture
) -> None:
    zombie, killed = replicas
    requests = _requests()
    with RerankerClient(zombie.server.grpc_url, load_balancing=LoadBalancing.PICK_FIRST) as solo:
        expected = [solo.score(query, documents) for query, documents in requests]
    # Every request must be told apart from every other one by its answer alone.
    assert len({tuple(np.round(scores, 4)) for scores in expected}) == len(requests)

    # gRPC's ipv4: scheme lists both replicas; round_robin alternates between them per call.
    target = f"ipv4:{zombie.server.grpc_url},{killed.server.grpc_url}"
    caplog.set_level(logging.INFO, logger="reranker_client")
    with RerankerClient(target, load_balancing=LoadBalancing.ROUND_ROBIN, retries=RETRIES) as client:
        capacity = _capacity(client, requests)
        with Load(client, requests, period_s=2.0 / capacity) as load:  # about half the capacity
            _wait_for_answers(load, 20)

            stub_kill = time.monotonic()
            assert kill_stubs(zombie.server.pid, TOKENIZER_MODEL_NAME, CORE_MODEL_NAME) >= 2
            zombie_heal = _healed(zombie, stub_kill)
            _wait_for_answers(load, 20)

            server_kill = time.monotonic()
            assert killed.server.pid is not None
            os.kill(killed.server.pid, signal.SIGKILL)
            exit_heal = _healed(killed, server_kill)
            _wait_for_answers(load, 20)

    # The supervisors saw each fault for what it was, healed it once and within the bound.
    assert not zombie.crashed and not killed.crashed
    assert zombie_heal.reason is RestartReason.STUB_EXITED, zombie.log  # seen at once, before any canary
    assert exit_heal.reason is RestartReason.EXITED, killed.log
    for heal, fault in ((zombie_heal, stub_kill), (exit_heal, server_kill)):
        assert heal.error is None and heal.serving_at is not None, heal
        assert heal.serving_at - fault <= HEAL_BOUND_S, heal
    print(
        f"capacity {capacity:.1f} req/s, load {capacity / 2:.1f} req/s, {len(load.answers)} answers; "
        f"zombie: detected {zombie_heal.detected_at - stub_kill:.1f} s after the kill, serving "
        f"{zombie_heal.recovered_after_s:.1f} s later; killed server: detected "
        f"{exit_heal.detected_at - server_kill:.1f} s after the kill, serving {exit_heal.recovered_after_s:.1f} s later"
    )
    assert [r.reason for r in zombie.supervisor.restarts] == [RestartReason.STUB_EXITED]
    assert [r.reason for r in killed.supervisor.restarts] == [RestartReason.EXITED]
    assert any("restarting tritonserver" in line for line in zombie.log), zombie.log
    # The faults did reach the client (it retried), and none got through to the caller.
    assert "retrying in" in caplog.text
    kinds = sorted({f"{type(error).__name__}: {error}" for _, error in load.failures})
    assert not load.failures, f"{len(load.failures)} of {len(load.failures) + len(load.answers)} failed: {kinds[:3]}"
    for index, scores in load.answers:
        np.testing.assert_allclose(scores, expected[index], rtol=1e-4, atol=1e-4, err_msg=f"request {index}")


@pytest.mark.timeout(300)
def test_without_watching_stubs_the_canaries_find_the_zombie(cpu_repository: Path, tmp_path: Path) -> None:
    """The canary is the fallback that needs no /proc (and finds a server that hangs with its stubs
    alive): with stub watching off, a zombie is still found and healed, by failed canaries."""
    server = TritonServer(cpu_repository, log_file=tmp_path / "triton.log").start()
    log: list[str] = []
    policy = HealingPolicy(watch_stubs=False, canary_interval_s=1.0, failure_interval_s=0.5, canary_timeout_s=1.0)
    replica = Replica(server, Supervisor(server, policy, log=log.append), threading.Thread(target=lambda: None), log)
    replica.thread = threading.Thread(target=_supervise, args=(replica,), name="supervisor")
    replica.thread.start()
    try:
        kill = time.monotonic()
        assert kill_stubs(server.pid, TOKENIZER_MODEL_NAME, CORE_MODEL_NAME) >= 2
        heal = _healed(replica, kill)
        assert heal.reason is RestartReason.CANARY and heal.serving_at is not None, log
        assert sum("canary failed" in line for line in log) >= policy.canary_failures, log
        with RerankerClient(server.grpc_url) as client:
            assert client.canary().healthy
    finally:
        replica.supervisor.stop()
        replica.thread.join(timeout=60)
        server.stop(grace_s=1.0)
    assert not replica.crashed, replica.crashed
