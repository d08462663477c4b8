"""Measurement of the side-by-side comparison: callers of both systems, closed-loop levels, CPU, stats.

Each system is reached through a :data:`ScoreCall` (query, documents -> scores);
:func:`run_level` sends a level's requests from ``concurrency`` closed-loop worker threads
and summarizes their latencies; :func:`process_tree_cpu` reads the server's CPU time around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from reranker_loadtest.workload import Workload

from .errors import BenchmarkError
from .reference import RERANK_PATH

SYSTEM_TRITON = "triton"
SYSTEM_REFERENCE = "reference"

ScoreCall = Callable[[str, Sequence[str]], Sequence[float]]
"""One system's scoring call: (query, documents) -> one score per document, in input order."""


@dataclass(frozen=True, kw_only=True)
class LevelResult:
    system: str
    concurrency: int
    requests: int
    failures: int
    wall_s: float
    pairs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    first_error: str | None = None
    server_cpu_s: float | None = None
    """CPU seconds the server's processes used during the level (user + system, all threads)."""

    @property
    def cpu_s_per_request(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s / self.requests


@dataclass(frozen=True, kw_only=True)
class Comparison:
    concurrency: int
    triton: LevelResult
    reference: LevelResult

    @property
    def throughput_ratio(self) -> float:
        return self.triton.pairs_per_s / self.reference.pairs_per_s if self.reference.pairs_per_s else float("nan")

    def latency_ratio(self, which: str) -> float:
        ref = float(getattr(self.reference, which))
        return float(getattr(self.triton, which)) / ref if ref else float("nan")

    @property
    def cpu_ratio(self) -> float:
        """Server CPU per request, (b)/(a): how many times less CPU this deployment spends per request."""
        a, b = self.triton.cpu_s_per_request, self.reference.cpu_s_per_request
        return b / a if a and b else float("nan")


def summarize(
    system: str,
    concurrency: int,
    latencies_s: Sequence[float],
    failures: int,
    wall_s: float,
    candidates: int,
    first_error: str | None = None,
) -> LevelResult:
    """Percentiles over every request (failed ones included); pairs/s counts successful requests only."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99)) if len(ms) else (0.0, 0.0, 0.0)
    ok = len(ms) - failures
    return LevelResult(
        system=system,
        concurrency=concurrency,
        requests=len(ms),
        failures=failures,
        wall_s=wall_s,
        pairs_per_s=ok * candidates / wall_s if wall_s > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        first_error=first_error,
    )


def run_level(
    system: str,
    make_call: Callable[[], ScoreCall],
    workload: Workload,
    *,
    concurrency: int,
    requests: int,
    start_index: int = 0,
    server_cpu: Callable[[], float] | None = None,
) -> LevelResult:
    """``concurrency`` closed-loop workers send requests ``start_index ..`` until ``requests`` are done.

    ``make_call`` builds one caller per worker thread (its own HTTP session, or the shared client).
    ``server_cpu`` returns the CPU seconds used so far by the system under test; the level
    reports the difference, which other tenants of the machine do not inflate.
    """
    pool = [workload.request(start_index + i) for i in range(requests)]
    counter = itertools.count()
    latencies: list[float] = []
    failures = 0
    first_error: str | None = None
    lock = threading.Lock()

    def worker() -> None:
        nonlocal failures, first_error
        call = make_call()
        while (i := next(counter)) < requests:
            request = pool[i]
            started = time.perf_counter()
            error: str | None = None
            try:
                scores = call(request.query, request.documents)
                if len(scores) != len(request.documents):
                    error = f"{len(scores)} scores for {len(request.documents)} documents"
            except Exception as exc:  # any failure of the system under test is a failed request
                error = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if error is not None:
                    failures += 1
                    first_error = first_error or error[:300]

    cpu_before = server_cpu() if server_cpu is not None else None
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"bench-{system}") as executor:
        for future in [executor.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - started
    result = summarize(system, concurrency, latencies, failures, wall, workload.settings.candidates, first_error)
    if server_cpu is not None and cpu_before is not None:
        result = dataclasses.replace(result, server_cpu_s=server_cpu() - cpu_before)
    return result


def process_tree_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    import psutil

    root = psutil.Process(pid)

    def total() -> float:
        seconds = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                seconds += times.user + times.system
        return seconds

    return total


def triton_caller(url: str, timeout_s: float) -> Callable[[], ScoreCall]:
    """(a): this deployment through ``reranker_client`` over gRPC."""
    from reranker_client import RerankerClient, RetryPolicy

    # One client for every worker, as the client's documentation asks (it is thread-safe).
    client = RerankerClient(url, timeout=timeout_s, retries=RetryPolicy.disabled())

    def call(query: str, documents: Sequence[str]) -> Sequence[float]:
        return [float(s) for s in client.score(query, documents)]

    return lambda: call


def reference_caller(base_url: str, timeout_s: float) -> Callable[[], ScoreCall]:
    """(b): the reference server with JSON over HTTP, one keep-alive session per worker."""
    import requests

    def make() -> ScoreCall:
        session = requests.Session()  # one keep-alive connection per worker

        def call(query: str, documents: Sequence[str]) -> Sequence[float]:
            response = session.post(
                f"{base_url}{RERANK_PATH}",
                json={"query": query, "documents": list(documents)},
                timeout=timeout_s,
            )
            response.raise_for_status()
            return [float(s) for s in response.json()["scores"]]

        return call

    return make


def check_parity(workload: Workload, triton: ScoreCall, reference: ScoreCall, tolerance: float) -> float:
    """Both systems must score the first request alike: same weights, same pair semantics."""
    request = workload.request(0)
    a = np.asarray(triton(request.query, request.documents), dtype=np.float64)
    b = np.asarray(reference(request.query, request.documents), dtype=np.float64)
    diff = float(np.max(np.abs(a - b)))
    if not diff <= tolerance:
        raise BenchmarkError(
            f"the two systems disagree: max |score(a) - score(b)| = {diff:.3g} > {tolerance:g}; "
            "they would not be computing the same thing"
        )
    return diff
