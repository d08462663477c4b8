"""``reranker-bench overload``: goodput, latency, shedding and recovery when offered load passes capacity.

It starts a local Triton on the ``cpu`` profile (the project's default serving settings) with
the tiny XLM-R test model, or uses a running one (``--triton-url``), and then

1. measures capacity: closed-loop callers, enough of them to saturate the server, no deadline
   pressure; successful requests per second;
2. drives open-loop Poisson arrivals at each level (default 0.5, 1, 2 and 4 x capacity) for a
   fixed time: every arrival is its own asyncio task calling :class:`AsyncRerankerClient` with the
   client deadline, whether or not earlier requests have answered, as independent callers do;
3. optionally replays closed-loop callers that give up at their deadline and immediately send
   the next request (``--closed-loop 16:2,32:1,64:1``: callers:deadline), the shape of the
   issue's "before" table.

After each level: a 1-document probe and then one full request, each with its own (long)
timeout, measure recovery; then it waits (bounded) until Triton has nothing pending, so levels
do not leak into each other. Triton's statistics before and after tell how much the server
computed for callers that had already gone. Every request has a deadline and a guard past it,
so a level cannot hang the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker_client import (
    AdaptiveThrottle,
    AsyncRerankerClient,
    DeadlineExceededError,
    RerankerError,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
)
from reranker_client import errors as client_errors
from reranker_client.config import ENSEMBLE_NAME
from reranker_common import Progress
from reranker_export.settings import CORE_MODEL_NAME

from .errors import BenchmarkError
from .machine import load_average, machine_info
from .overload_report import Capacity, Kind, LevelResult, Outcome, OverloadReport, Recovery, ServerWork

if TYPE_CHECKING:
    from reranker_export.settings import ServingSettings

# Triton's words for a request its queue policy refused, where the client knows them.
SHED_MESSAGES: tuple[str, ...] = getattr(client_errors, "SHED_MESSAGES", ())
HANG_GRACE_S = 5.0
"""A call still unanswered this long past its deadline counts as hung and is abandoned."""
CAPACITY_TIMEOUT_S = 30.0
"""Deadline of the capacity run's requests: long, so it measures throughput, not shedding."""
WARMUP_S = 3.0
STABLE_STATS_S = 2.0
"""The backlog counts as drained once no model's counts have moved for this long."""
DEFAULT_CLOSED_LOOP = "16:2,32:1,64:1"
"""The issue's "before" table: 16 callers with a 2 s deadline, 32 and 64 with 1 s."""

Request = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class CallerCase:
    """Closed-loop callers that give up after ``deadline_s`` and immediately send their next request."""

    callers: int
    deadline_s: float

    @classmethod
    def parse(cls, text: str) -> CallerCase:
        callers, _, deadline = text.strip().partition(":")
        try:
            case = cls(int(callers), float(deadline))
        except ValueError:
            raise BenchmarkError(f"a closed-loop case is CALLERS:DEADLINE_S (e.g. 32:1), got {text!r}") from None
        if case.callers < 1 or not case.deadline_s > 0:
            raise BenchmarkError(f"a closed-loop case needs callers >= 1 and a positive deadline, got {text!r}")
        return case

    @classmethod
    def parse_list(cls, text: str) -> tuple[CallerCase, ...]:
        return tuple(cls.parse(part) for part in text.split(",") if part.strip())

    def __str__(self) -> str:
        return f"{self.callers} callers, {self.deadline_s:g} s deadline"


def parse_levels(text: str) -> tuple[float, ...]:
    """``"0.5,1,2,4"`` -> the offered loads as multiples of capacity; ``""`` -> none."""
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchmarkError(f"levels are comma-separated multiples of capacity (0.5,1,2,4), got {text!r}") from None
    if any(not level > 0 for level in levels):
        raise BenchmarkError(f"levels must be positive, got {text!r}")
    return levels


@dataclass(frozen=True, kw_only=True)
class OverloadSettings:
    levels: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    """Open-loop offered loads, as multiples of the measured capacity."""
    level_duration_s: float = 20.0
    deadline_s: float = 1.0
    """The client deadline of every request of the levels."""
    documents: int = 50
    """Candidates per request."""
    document_passages: int = 6
    """Test-corpus sentences joined into one candidate: 6 make ~95 tokens, a short passage whose
    request costs the tiny model about what the issue's measurements did (~20 req/s on 2 cores)."""
    capacity_duration_s: float = 15.0
    capacity_callers: int = 8
    capacity_per_s: float | None = None
    """Skip the capacity run and use this many requests per second."""
    closed_loop: tuple[CallerCase, ...] = ()
    probe_timeout_s: float = 120.0
    """Timeout of the recovery probe and of the first full request after a level."""
    drain_timeout_s: float = 180.0
    """How long to wait after a level for Triton to finish its backlog before the next one."""
    seed: int = 0
    client_throttle: bool = True
    """The client's adaptive throttling (``RetryPolicy.throttle``, on by default); ``False`` sends
    every attempt, to measure what the throttle changes."""
    model_dir: Path | None = None
    """An existing cross-encoder directory; ``None`` builds the tiny XLM-R test model."""
    work_dir: Path | None = None
    """Where the model, the repository and the server log go; ``None``: a temporary directory."""
    triton_url: str | None = None
    """Measure this running Triton (``host:port``, gRPC) instead of starting one."""
    metrics_url: str | None = None
    """Its Prometheus endpoint (``http://host:port/metrics``), for failure reasons and pending counts."""

    def __post_init__(self) -> None:
        for name in ("level_duration_s", "deadline_s", "capacity_duration_s", "probe_timeout_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise BenchmarkError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("documents", "capacity_callers"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.document_passages < 1:
            raise BenchmarkError(f"document-passages must be positive, got {self.document_passages}")
        if self.capacity_per_s is not None and not self.capacity_per_s > 0:
            raise BenchmarkError(f"capacity must be positive, got {self.capacity_per_s}")
        if any(not level > 0 for level in self.levels):
            raise BenchmarkError(f"levels must be positive, got {self.levels}")
        if not self.levels and not self.closed_loop:
            raise BenchmarkError("nothing to run: give open-loop --levels or --closed-loop cases")
        if self.metrics_url is not None and self.triton_url is None:
            raise BenchmarkError("--metrics-url goes with --triton-url")


def build_requests(documents: int, document_passages: int, count: int = 64) -> list[Request]:
    """Distinct requests: a held-out query of the test corpus and ``documents`` candidates.

    A candidate is ``document_passages`` consecutive passages of the corpus joined (each a
    sentence of one language, 10-30 tokens).
    """
    from reranker_export.testmodels import corpus

    entries = corpus()
    passages = [e.text for e in entries if e.kind == "passage"]
    queries = [e.text for e in entries if e.kind == "query" and e.split == "test"]

    def candidate(start: int) -> str:
        return " ".join(passages[(start + j) % len(passages)] for j in range(document_passages))

    return [
        (queries[i % len(queries)], tuple(candidate((i * documents + k) * document_passages) for k in range(documents)))
        for i in range(count)
    ]


def cpu_serving_settings(documents: int) -> ServingSettings:
    """The project's default ``cpu`` serving settings, with room for ``documents`` per request."""
    from reranker_export.settings import Profile, ServingSettings, TokenizerSettings

    tokenizer = TokenizerSettings(max_documents=max(TokenizerSettings().max_documents, documents))
    return ServingSettings(
        profile=Profile.CPU, tokenizer=tokenizer, max_batch_size=max(ServingSettings().max_batch_size, documents)
    )


# -- one call, and the three ways of sending them ----------------------------------------------


def error_label(error: RerankerError) -> str:
    """The exception's class, with its gRPC code where the class does not say it (``ServerError CANCELLED``)
    and Triton's words for a shed (``OverloadedError: Exceeds maximum queue size``), or the
    client's own refusal (``OverloadedError: refused by the client``)."""
    name = type(error).__name__
    if isinstance(error, ServerError) and error.code is not None:
        return f"{name} {error.code.name}"
    if isinstance(error, ServerUnavailableError) and error.code is None:  # the client's throttle
        return f"{name}: refused by the client"
    why = next((message for message in SHED_MESSAGES if message in str(error)), None)
    return f"{name}: {why}" if why else name


async def call(client: AsyncRerankerClient, request: Request, timeout_s: float) -> Outcome:
    """One request with the client deadline ``timeout_s``; how it ended, never an exception."""
    query, documents = request
    started = time.perf_counter()
    kind, error = Kind.SUCCESS, None
    try:
        await asyncio.wait_for(client.score(query, documents, timeout=timeout_s), timeout_s + HANG_GRACE_S)
    except ServerUnavailableError as exc:  # OverloadedError, where it exists, is one of these
        kind, error = Kind.SHED, error_label(exc)
    except DeadlineExceededError as exc:
        kind, error = Kind.DEADLINE, error_label(exc)
    except RerankerError as exc:
        kind, error = Kind.OTHER, error_label(exc)
    except TimeoutError:
        kind, error = Kind.HUNG, "no answer past the deadline"
    return Outcome(kind, time.perf_counter() - started, error)


async def open_loop(
    client: AsyncRerankerClient,
    requests: list[Request],
    *,
    rate_per_s: float,
    duration_s: float,
    timeout_s: float,
    rng: random.Random,
) -> tuple[list[Outcome], list[float]]:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s``, each its own task: none waits for another.

    Arrival times are drawn on an absolute schedule, so a late wake-up is caught up at once
    instead of lowering the offered rate. Returns the outcomes and each arrival's lag behind its
    schedule (seconds): a large lag means this process, not the server, limited the load.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    at = 0.0
    tasks: list[asyncio.Task[Outcome]] = []
    lags: list[float] = []
    while True:
        at += rng.expovariate(rate_per_s)
        if at >= duration_s:
            break
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, loop.time() - start - at))
        tasks.append(asyncio.create_task(call(client, requests[len(tasks) % len(requests)], timeout_s)))
    # The last arrivals' calls finish within their deadline (and the guard past it).
    return list(await asyncio.gather(*tasks)), lags


async def closed_loop(
    client: AsyncRerankerClient,
    requests: list[Request],
    *,
    callers: int,
    duration_s: float,
    timeout_s: float,
) -> tuple[list[Outcome], float]:
    """``callers`` loops that each send a request, wait for it (or give up at ``timeout_s``), send the next.

    Returns the outcomes and the seconds from the start until the last caller's last answer.
    """
    started = time.perf_counter()
    end = started + duration_s
    outcomes: list[Outcome] = []

    async def caller(index: int) -> None:
        sent = 0
        while time.perf_counter() < end:
            outcomes.append(await call(client, requests[(index + sent * callers) % len(requests)], timeout_s))
            sent += 1

    await asyncio.gather(*(caller(i) for i in range(callers)))
    return outcomes, time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


# -- what the server did -------------------------------------------------------------------------

_METRIC_LINE = re.compile(r"^(?P<name>\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in Prometheus' text format: (labels, value)."""
    samples = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match and match.group("name") == name:
            samples.append((dict(_LABEL.findall(match.group("labels"))), float(match.group("value"))))
    return samples


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counts from Triton's statistics (and metrics, when reachable) at one moment."""

    completed: int
    failed: int
    rows: int
    executions: int
    steps: dict[str, tuple[int, int]]
    """Per step (every model but the ensemble): compute ns and requests it completed."""
    failure_reasons: dict[str, int]
    step_counters: dict[str, int]

    def since(self, before: Snapshot) -> ServerWork:
        steps = {
            name: ((ns - before.steps.get(name, (0, 0))[0]) * 1e-9, done - before.steps.get(name, (0, 0))[1])
            for name, (ns, done) in self.steps.items()
        }
        return ServerWork(
            completed=self.completed - before.completed,
            failed=self.failed - before.failed,
            rows_computed=self.rows - before.rows,
            executions=self.executions - before.executions,
            step_compute=steps,
            failure_reasons=_increase(before.failure_reasons, self.failure_reasons),
            step_counters=_increase(before.step_counters, self.step_counters),
        )


def _increase(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that grew, by how much."""
    return {key: value - before.get(key, 0) for key, value in after.items() if value > before.get(key, 0)}


def step_counters(text: str) -> dict[str, int]:
    """The python steps' own counters (``reranker_*_total``), keyed ``name{label=value,...}``."""
    counters: dict[str, int] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match and match.group("name").startswith("reranker_") and match.group("name").endswith("_total"):
            labels = ",".join(f"{k}={v}" for k, v in sorted(_LABEL.findall(match.group("labels"))))
            key = f"{match.group('name').removeprefix('reranker_').removesuffix('_total')}{{{labels}}}"
            counters[key] = counters.get(key, 0) + int(float(match.group("value")))
    return counters


class ServerProbe:
    """Reads Triton's statistics (gRPC) and, when it has the address, its metrics endpoint."""

    def __init__(self, grpc_url: str, metrics_url: str | None) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(grpc_url)
        self.metrics_url = metrics_url
        # No proxy: an http_proxy in the environment must not see requests to localhost.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        self.client.close()

    def metrics(self) -> str | None:
        if self.metrics_url is None:
            return None
        with self._opener.open(self.metrics_url, timeout=10) as reply:
            return str(reply.read().decode("utf-8"))

    def snapshot(self) -> Snapshot:
        models = {m["name"]: m for m in self.client.get_inference_statistics(as_json=True)["model_stats"]}
        if ENSEMBLE_NAME not in models or CORE_MODEL_NAME not in models:
            raise BenchmarkError(f"the server does not serve {ENSEMBLE_NAME!r} and {CORE_MODEL_NAME!r}")

        def count(model: str, key: str) -> int:
            return int(models[model].get("inference_stats", {}).get(key, {}).get("count", 0))

        steps = {
            name: (
                sum(
                    int(stats.get("inference_stats", {}).get(kind, {}).get("ns", 0))
                    for kind in ("compute_input", "compute_infer", "compute_output")
                ),
                count(name, "success"),
            )
            for name, stats in models.items()
            if name != ENSEMBLE_NAME
        }
        reasons: dict[str, int] = {}
        counters: dict[str, int] = {}
        text = self.metrics()
        if text is not None:
            for labels, value in parse_metrics(text, "nv_inference_request_failure"):
                key = f"{labels.get('model', '?')}/{labels.get('reason', 'failed')}"
                reasons[key] = reasons.get(key, 0) + int(value)
            counters = step_counters(text)
        core = models[CORE_MODEL_NAME]
        return Snapshot(
            completed=count(ENSEMBLE_NAME, "success"),
            failed=count(ENSEMBLE_NAME, "fail"),
            rows=int(core.get("inference_count", 0)),
            executions=int(core.get("execution_count", 0)),
            steps=steps,
            failure_reasons=reasons,
            step_counters=counters,
        )

    def counts(self) -> tuple[int, ...]:
        """Every model's finished requests and executions: they stop moving once the backlog is gone."""
        models = self.client.get_inference_statistics(as_json=True)["model_stats"]
        return tuple(
            int(value)
            for stats in models
            for value in (
                stats.get("inference_stats", {}).get("success", {}).get("count", 0),
                stats.get("inference_stats", {}).get("fail", {}).get("count", 0),
                stats.get("execution_count", 0),
            )
        )

    async def wait_drained(self, since: float, timeout_s: float) -> float | None:
        """Seconds from ``since`` (``perf_counter``) to the server's last finished request; ``None``: still busy.

        Triton's ``nv_inference_pending_request_count`` is no help here: requests cancelled in a
        queue stay counted as pending (Triton 2.51), so the backlog is gone once no model's
        counts have moved for :data:`STABLE_STATS_S`.
        """
        deadline = time.perf_counter() + timeout_s
        last = self.counts()
        changed = time.perf_counter()
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            counts = self.counts()
            if counts != last:
                last, changed = counts, time.perf_counter()
            elif time.perf_counter() - changed >= STABLE_STATS_S:
                return max(0.0, changed - since)
        return None


# -- the run -------------------------------------------------------------------------------------


class _Bench:
    def __init__(
        self, settings: OverloadSettings, client: AsyncRerankerClient, server: ServerProbe, progress: Progress
    ) -> None:
        self.settings = settings
        self.client = client
        self.server = server
        self.progress = progress
        self.requests = build_requests(settings.documents, settings.document_passages)
        self.rng = random.Random(settings.seed)

    async def capacity(self) -> Capacity:
        s = self.settings
        if s.capacity_per_s is not None:
            return Capacity(
                per_s=s.capacity_per_s,
                callers=0,
                duration_s=0.0,
                successes=0,
                failures=0,
                p50_ms=0.0,
                p95_ms=0.0,
                measured=False,
            )
        self.progress(f"warm-up: {s.capacity_callers} closed-loop callers for {WARMUP_S:g} s")
        await closed_loop(
            self.client, self.requests, callers=s.capacity_callers, duration_s=WARMUP_S, timeout_s=CAPACITY_TIMEOUT_S
        )
        self.progress(f"capacity: {s.capacity_callers} closed-loop callers for {s.capacity_duration_s:g} s")
        outcomes, elapsed = await closed_loop(
            self.client,
            self.requests,
            callers=s.capacity_callers,
            duration_s=s.capacity_duration_s,
            timeout_s=CAPACITY_TIMEOUT_S,
        )
        ok = [o.seconds for o in outcomes if o.kind is Kind.SUCCESS]
        if not ok:
            errors = sorted({o.error or o.kind.value for o in outcomes})
            raise BenchmarkError(f"no request succeeded while measuring capacity: {', '.join(errors)}")

        capacity = Capacity(
            per_s=len(ok) / elapsed,
            callers=s.capacity_callers,
            duration_s=elapsed,
            successes=len(ok),
            failures=len(outcomes) - len(ok),
            p50_ms=float(np.percentile(ok, 50) * 1e3),
            p95_ms=float(np.percentile(ok, 95) * 1e3),
        )
        self.progress(f"capacity: {capacity.per_s:.1f} req/s (p95 {capacity.p95_ms:.0f} ms)")
        return capacity

    async def level(self, name: str, drive: Callable[[], Any], **fields: Any) -> LevelResult:
        """Run one level (``drive`` returns its outcomes and arrival lags), then recovery and the backlog."""
        s = self.settings
        before = self.server.snapshot()
        outcomes, lags = await drive()
        ended = time.perf_counter()
        probe = await call(self.client, (self.requests[0][0], self.requests[0][1][:1]), s.probe_timeout_s)
        full = await call(self.client, self.requests[1], s.probe_timeout_s)
        drained = await self.server.wait_drained(ended, s.drain_timeout_s)
        work = self.server.snapshot().since(before)
        result = LevelResult(
            name=name,
            documents=s.documents,
            outcomes=tuple(outcomes),
            recovery=Recovery(probe=probe, full=full, drained_s=drained),
            server=work,
            arrival_lag_ms=None if lags is None else (_percentile(lags, 95) * 1e3, max(lags, default=0.0) * 1e3),
            **fields,
        )
        self.progress(
            f"  {name}: sent {result.sent}, goodput {result.goodput_per_s:.1f} req/s, shed {result.shed}, "
            f"deadline misses {result.count(Kind.DEADLINE)}, other {result.count(Kind.OTHER)}, "
            f"hung {result.count(Kind.HUNG)}; probe after the load "
            f"{probe.seconds:.2f} s ({probe.kind.value}); backlog "
            + ("not drained" if drained is None else f"drained in {drained:.1f} s")
        )
        return result

    async def open_level(self, factor: float, capacity: Capacity) -> LevelResult:
        s = self.settings
        rate = factor * capacity.per_s
        self.progress(f"open loop {factor:g}x: {rate:.1f} req/s for {s.level_duration_s:g} s")

        async def drive() -> tuple[list[Outcome], list[float]]:
            return await open_loop(
                self.client,
                self.requests,
                rate_per_s=rate,
                duration_s=s.level_duration_s,
                timeout_s=s.deadline_s,
                rng=self.rng,
            )

        return await self.level(
            f"{factor:g}x",
            drive,
            factor=factor,
            offered_per_s=rate,
            deadline_s=s.deadline_s,
            duration_s=s.level_duration_s,
        )

    async def closed_case(self, case: CallerCase) -> LevelResult:
        s = self.settings
        self.progress(f"closed loop: {case} for {s.level_duration_s:g} s")

        async def drive() -> tuple[list[Outcome], None]:
            outcomes, _ = await closed_loop(
                self.client,
                self.requests,
                callers=case.callers,
                duration_s=s.level_duration_s,
                timeout_s=case.deadline_s,
            )
            return outcomes, None

        return await self.level(
            f"{case.callers}, {case.deadline_s:g} s",
            drive,
            callers=case.callers,
            deadline_s=case.deadline_s,
            duration_s=s.level_duration_s,
        )


async def _measure(
    settings: OverloadSettings, grpc_url: str, metrics_url: str | None, progress: Progress
) -> tuple[Capacity, list[LevelResult], list[LevelResult]]:
    server = ServerProbe(grpc_url, metrics_url)
    try:
        retries = RetryPolicy() if settings.client_throttle else RetryPolicy(throttle=None)
        async with AsyncRerankerClient(grpc_url, retries=retries) as client:
            await client.wait_until_ready(timeout=60)
            bench = _Bench(settings, client, server, progress)
            capacity = await bench.capacity()
            levels = [await bench.open_level(factor, capacity) for factor in settings.levels]
            cases = [await bench.closed_case(case) for case in settings.closed_loop]
    finally:
        server.close()
    return capacity, levels, cases


def run_overload_benchmark(settings: OverloadSettings, *, command: str, progress: Progress = print) -> OverloadReport:
    """Start (or use) a server, measure capacity, run every level and case; the report."""
    from reranker_serve import ServeError, TritonServer

    serving = cpu_serving_settings(settings.documents)
    with contextlib.ExitStack() as stack:
        if settings.triton_url is not None:
            grpc_url, metrics_url = settings.triton_url, settings.metrics_url
            described = f"the running Triton at {grpc_url}"
        else:
            from .models import export_repository, prepare_test_model

            if settings.work_dir is not None:
                work = settings.work_dir
                work.mkdir(parents=True, exist_ok=True)
            else:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-overload-")))
            model_dir = prepare_test_model(settings.model_dir, work, progress)
            repo = export_repository(model_dir, work / "repository", serving, progress=progress)
            progress(f"starting Triton on {repo}")
            try:
                server = stack.enter_context(TritonServer(repo, log_file=work / "triton.log"))
            except ServeError as exc:
                raise BenchmarkError(f"Triton did not start: {exc}") from exc
            grpc_url, metrics_url = server.grpc_url, server.metrics_url
            queue = getattr(serving, "queue", None)  # the queue policy, where this version has one
            queues = (
                "unbounded queues"
                if queue is None or not queue.max_queue_size
                else f"queues of {queue.max_queue_size} requests, queue timeout {queue.timeout_us / 1e6:g} s "
                "or the caller's deadline"
            )
            described = (
                f"local Triton, cpu profile, project defaults (max_queue_delay_us {serving.max_queue_delay_us}, "
                f"{serving.tokenizer_instances} tokenizer / {serving.model_instances} model instances, {queues}), "
                + ("the tiny XLM-R test model" if settings.model_dir is None else str(settings.model_dir))
            )
        load_before = load_average()
        capacity, levels, cases = asyncio.run(_measure(settings, grpc_url, metrics_url, progress))
        load_after = load_average()
    return OverloadReport(
        command=command,
        settings={
            "levels": list(settings.levels),
            "level_duration_s": settings.level_duration_s,
            "deadline_s": settings.deadline_s,
            "documents": settings.documents,
            "document_passages": settings.document_passages,
            "capacity_callers": settings.capacity_callers,
            "capacity_duration_s": settings.capacity_duration_s,
            "closed_loop": [f"{c.callers}:{c.deadline_s:g}" for c in settings.closed_loop],
            "probe_timeout_s": settings.probe_timeout_s,
            "drain_timeout_s": settings.drain_timeout_s,
            "seed": settings.seed,
            "client_throttle": asdict(AdaptiveThrottle()) if settings.client_throttle else None,
            "server": described,
        },
        machine=machine_info(),
        load_before=load_before,
        load_after=load_after,
        capacity=capacity,
        levels=levels,
        closed_loop=cases,
    )
