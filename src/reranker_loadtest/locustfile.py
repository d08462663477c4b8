"""Locust load test of the ``reranker`` ensemble over gRPC, with an SLO gate.

Run it through ``reranker-loadtest`` (defaults, verdict table), or with Locust's own CLI::

    locust -f src/reranker_loadtest/locustfile.py --headless -u 16 -r 16 -t 60s --host 127.0.0.1:8001 \\
        --csv report/stats --html report/report.html --slo-p95-ms 200

Each simulated user is a closed-loop client: it sends one request (a query and
``--candidates`` passages from the repeatable workload), waits for the scores and sends
the next. With ``--arrival-rate R`` the run is open loop instead: the users are arrival
generators that together send Poisson arrivals at R requests per second, each request in
its own greenlet, whether or not earlier ones have answered (a slow or shedding server
cannot slow the offered load down, as it cannot in production). Every call fires a
Locust ``request`` event with its latency and response size; a failed call is reported
with its gRPC status code. When the process quits, the SLO gate checks p95 latency and
the failure ratio over the whole run, reports goodput and the shed ratio beside them, and
sets the exit code (on the master only in distributed mode, where the stats are aggregated).
"""

from __future__ import annotations

# gRPC's C core must cooperate with gevent before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import csv  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from gevent.pool import Group  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV  # noqa: E402

from reranker_client import RerankerClient, RerankerError, RetryPolicy  # noqa: E402
from reranker_client.config import ENSEMBLE_NAME  # noqa: E402
from reranker_loadtest.errors import LoadtestError  # noqa: E402
from reranker_loadtest.runner import DEFAULT_REQUEST_POOL, DEFAULT_REQUEST_TIMEOUT_S  # noqa: E402
from reranker_loadtest.slo import (  # noqa: E402
    DEFAULT_MAX_FAILURE_RATIO,
    DEFAULT_P95_MS,
    RunSummary,
    SloSettings,
    classify_failures,
    evaluate,
    format_verdict,
)
from reranker_loadtest.workload import (  # noqa: E402
    DEFAULT_CANDIDATES,
    DEFAULT_DOCUMENT_WORDS,
    DEFAULT_QUERY_WORDS,
    DEFAULT_SEED,
    LengthDistribution,
    RerankRequest,
    Workload,
    WorkloadSettings,
)

logger = logging.getLogger("reranker_loadtest")

REQUEST_TYPE = "grpc"
# Durations in the client's messages ("gave up after 1 attempt(s) in 0.86 s"): Locust groups
# failures by message, so they are blanked to keep one row per kind of failure.
_SECONDS = re.compile(r"\b\d+(?:\.\d+)? s\b")


class GrpcRequestFailed(Exception):
    """A failed call as Locust records it: grouped by gRPC status code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code

    def __repr__(self) -> str:  # Locust groups failures by repr; slo.failure_code reads the code back
        return f"GrpcRequestFailed({self.args[0]!r})"


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("reranker", "Workload, target model and SLO gate of the reranker test")
    group.add_argument("--model", default=ENSEMBLE_NAME, help="Triton model (the ensemble) to call")
    group.add_argument(
        "--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, help="Deadline of one call, in seconds"
    )
    group.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="Passages per request (default 50)")
    group.add_argument(
        "--query-words",
        default=DEFAULT_QUERY_WORDS,
        help="Query length distribution in words: KIND:LOW-HIGH, KIND uniform or normal",
    )
    group.add_argument("--document-words", default=DEFAULT_DOCUMENT_WORDS, help="Passage length distribution in words")
    group.add_argument(
        "--languages",
        default="",
        help="Comma-separated languages of the generated text (default: every bundled word list)",
    )
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help="Workload seed (repeatable runs)")
    group.add_argument(
        "--request-pool",
        type=int,
        default=DEFAULT_REQUEST_POOL,
        help="Distinct requests generated per process before the run and sent in turn",
    )
    group.add_argument("--slo-p95-ms", type=float, default=DEFAULT_P95_MS, help="SLO: p95 latency bound in ms")
    group.add_argument(
        "--slo-max-failure-ratio",
        type=float,
        default=DEFAULT_MAX_FAILURE_RATIO,
        help="SLO: highest share of failed requests",
    )
    group.add_argument("--slo-report", default="", help="Write the SLO verdict as JSON to this file when the run ends")
    group.add_argument(
        "--arrival-rate",
        type=float,
        default=0.0,
        help="Open loop: requests per second offered by all users together, Poisson arrivals sent without "
        "waiting for earlier answers (0: closed-loop users)",
    )
    group.add_argument(
        "--arrival-users",
        type=int,
        default=0,
        help="Users the arrival rate is split across (0: --users; the master sets it for its workers)",
    )


def workload_settings(options: Any) -> WorkloadSettings:
    """The workload Locust's parsed options describe."""
    languages = tuple(x.strip() for x in options.languages.split(",") if x.strip()) or None
    return WorkloadSettings(
        candidates=options.candidates,
        query_words=LengthDistribution.parse(options.query_words),
        document_words=LengthDistribution.parse(options.document_words),
        languages=languages,
        seed=options.seed,
    )


class _RequestPool:
    """Pre-generated requests shared by the users of one process, handed out in turn."""

    def __init__(self) -> None:
        self.requests: list[RerankRequest] = []
        self._next = itertools.count()

    def fill(self, environment: Environment) -> None:
        options = environment.parsed_options
        assert options is not None  # test_start only fires once options are parsed
        size = max(1, options.request_pool)
        worker_index = getattr(environment.runner, "worker_index", 0) or 0
        # Workers of a distributed run send different (still repeatable) requests.
        start = max(0, worker_index) * size
        self.requests = Workload(workload_settings(options)).requests(size, start=start)
        self._next = itertools.count()

    def take(self) -> RerankRequest:
        return self.requests[next(self._next) % len(self.requests)]


_POOL = _RequestPool()


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    """Refuse bad workload or SLO options with one line, before any user starts."""
    options = environment.parsed_options
    if options is None:
        return
    try:
        workload_settings(options)
        SloSettings(p95_ms=options.slo_p95_ms, max_failure_ratio=options.slo_max_failure_ratio)
        if options.arrival_rate < 0 or options.arrival_users < 0:
            raise LoadtestError("--arrival-rate and --arrival-users must be >= 0")
    except LoadtestError as exc:
        logger.error("invalid reranker options: %s", exc)
        raise SystemExit(2) from None
    if not isinstance(environment.runner, WorkerRunner) and not options.arrival_users:
        # Workers only see the share of users they run; custom options travel to them with each
        # spawn message, so the total goes this way.
        options.arrival_users = max(1, int(getattr(options, "num_users", 1) or 1))
    if isinstance(environment.runner, MasterRunner):
        environment.events.worker_report.add_listener(_WORKER_REQUESTS.on_worker_report)
    elif isinstance(environment.runner, WorkerRunner):
        environment.events.report_to_master.add_listener(_WORKER_REQUESTS.on_report_to_master)


class _WorkerRequests:
    """Requests sent per worker, carried to the master beside Locust's own stats reports.

    Workers send their stats as deltas; this count is cumulative, so the master keeps each
    worker's latest and the sum is every request the workers sent.
    """

    KEY = "reranker_requests_sent"

    def __init__(self) -> None:
        self.sent = 0
        self.by_worker: dict[str, int] = {}

    def count(self, **_: Any) -> None:
        self.sent += 1

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        data[self.KEY] = self.sent

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        if self.KEY in data:
            self.by_worker[client_id] = int(data[self.KEY])


_WORKER_REQUESTS = _WorkerRequests()
events.request.add_listener(_WORKER_REQUESTS.count)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if environment.parsed_options is not None:
        _POOL.fill(environment)


_CLIENTS: dict[tuple[str, str, float], RerankerClient] = {}


def _client(host: str, model: str, timeout_s: float) -> RerankerClient:
    """One client (one gRPC channel) per process, shared by its users, as a service would hold it."""
    key = (host, model, timeout_s)
    if key not in _CLIENTS:
        # No retries: a load test must see every UNAVAILABLE as a failure, not as latency.
        _CLIENTS[key] = RerankerClient(host, model=model, timeout=timeout_s, retries=RetryPolicy.disabled())
    return _CLIENTS[key]


@events.test_stop.add_listener
def _close_clients(**_: Any) -> None:
    while _CLIENTS:
        _CLIENTS.popitem()[1].close()


_USER_NUMBERS = itertools.count()


class RerankerUser(User):
    """One caller of the ensemble through the project's gRPC client: closed loop, or an open-loop arrival source.

    Closed loop (the default): send, wait for the answer, send the next. Open loop
    (``--arrival-rate``): every task fires one request in its own greenlet and returns at once;
    the waits between tasks are exponential gaps on an absolute schedule, so the arrivals
    form a Poisson process at this user's share of the rate whatever the server does.
    """

    def on_start(self) -> None:
        options = self.environment.parsed_options
        host = (self.host or "127.0.0.1:8001").removeprefix("grpc://")
        self.client = _client(host, options.model, options.request_timeout_s)
        self.rate = options.arrival_rate / max(1, options.arrival_users) if options.arrival_rate > 0 else 0.0
        self.in_flight = Group()
        worker_index = getattr(self.environment.runner, "worker_index", 0) or 0
        self.rng = random.Random(f"{options.seed}-{worker_index}-{next(_USER_NUMBERS)}")
        self.next_arrival = time.monotonic()

    def on_stop(self) -> None:
        # Open loop: the requests still in flight finish (each within its deadline) and count.
        self.in_flight.join(timeout=self.environment.parsed_options.request_timeout_s + 1.0)

    def wait_time(self) -> float:
        if not self.rate:
            return 0.0
        self.next_arrival += self.rng.expovariate(self.rate)
        return max(0.0, self.next_arrival - time.monotonic())

    @task
    def rerank(self) -> None:
        request = _POOL.take()
        if self.rate:
            self.in_flight.spawn(self._send, request)
        else:
            self._send(request)

    def _send(self, request: RerankRequest) -> None:
        start = time.perf_counter()
        exception: Exception | None = None
        response_length = 0
        try:
            scores = self.client.score(request.query, list(request.documents))
            response_length = int(scores.nbytes)
            if len(scores) != len(request.documents):
                exception = GrpcRequestFailed(
                    "BAD_RESPONSE", f"{len(scores)} scores for {len(request.documents)} documents"
                )
        except RerankerError as exc:
            # Client-side failures (e.g. a malformed response) have no status: name the error class.
            code = exc.code.name if exc.code is not None else type(exc).__name__
            exception = GrpcRequestFailed(code, _SECONDS.sub("… s", str(exc)))
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=f"{self.environment.parsed_options.model}/score",
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=response_length,
            exception=exception,
            context={"language": request.language, "payload_bytes": request.payload_bytes},
        )


def run_summary(environment: Environment) -> RunSummary:
    """Plain numbers of the whole run from Locust's (aggregated) stats."""
    total = environment.stats.total
    duration = 0.0
    if total.last_request_timestamp is not None and total.start_time:
        duration = max(0.0, total.last_request_timestamp - total.start_time)
    failures_by_error = {str(e.error): int(e.occurrences) for e in environment.stats.errors.values()}
    shed, deadline_misses = classify_failures(failures_by_error)
    requests = total.num_requests
    options = environment.parsed_options
    return RunSummary(
        requests=requests,
        failures=total.num_failures,
        p50_ms=float(total.get_response_time_percentile(0.50) or 0.0) if requests else 0.0,
        p95_ms=float(total.get_response_time_percentile(0.95) or 0.0) if requests else 0.0,
        p99_ms=float(total.get_response_time_percentile(0.99) or 0.0) if requests else 0.0,
        duration_s=duration,
        candidates=options.candidates if options else 0,
        failures_by_error=failures_by_error,
        shed=shed,
        deadline_misses=deadline_misses,
        arrival_rate=options.arrival_rate if options and options.arrival_rate > 0 else None,
        requests_by_worker=dict(_WORKER_REQUESTS.by_worker) if isinstance(environment.runner, MasterRunner) else {},
    )


def _write_final_csv(environment: Environment, prefix: str) -> None:
    """Rewrite the CSV tables with the final stats.

    Locust refreshes them once a second and not again at exit, so the last requests of a run
    could be missing from them while the verdict counts them.
    """
    tables = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", tables.requests_csv),
        ("_failures.csv", tables.failures_csv),
        ("_exceptions.csv", tables.exceptions_csv),
    ):
        with open(prefix + suffix, "w", newline="", encoding="utf-8") as f:
            write(csv.writer(f))


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # workers hold a share of the stats; the master judges the aggregate
    options = environment.parsed_options
    if options.csv_prefix:
        _write_final_csv(environment, options.csv_prefix)
    slo = SloSettings(p95_ms=options.slo_p95_ms, max_failure_ratio=options.slo_max_failure_ratio)
    verdict = evaluate(run_summary(environment), slo)
    logger.info("\n%s", format_verdict(verdict))
    if options.slo_report:
        verdict.write(Path(options.slo_report))
    if not verdict.passed:
        environment.process_exit_code = 1
    elif environment.runner is not None and not environment.runner.exceptions:
        # Within the SLO, tolerated failures must not turn the exit code red.
        environment.process_exit_code = 0
