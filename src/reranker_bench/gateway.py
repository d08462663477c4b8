"""Overhead of the HTTP gateway: the same reranks sent straight to Triton over gRPC and through
``reranker-gateway`` (HTTP, Cohere v1 schema), side by side on one server, in one run.

Each concurrency level alternates the two paths in rounds (direct, gateway, direct, ...) so that
drift in the machine's load hits both alike. The direct path is ``AsyncRerankerClient`` in this
process; the gateway path is aiohttp in this process -> the gateway (a subprocess, itself an
``AsyncRerankerClient``) -> the same Triton. Reported per level: p50/p95 latency, requests/s, the
gateway's CPU time per request, and the two targets of issue 13: at most 1 ms added p50, at most
5% throughput lost at the highest concurrency.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reranker_common import Progress, free_port

from .errors import BenchmarkError

DIRECT, GATEWAY = "direct gRPC", "gateway HTTP"
TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT_LOSS = 0.05


@dataclass(frozen=True, kw_only=True)
class GatewayBenchSettings:
    concurrency: tuple[int, ...] = (1, 16)
    requests: int = 200
    """Measured requests per level and path, split over ``rounds``."""
    rounds: int = 4
    warmup: int = 16
    candidates: int = 50
    document_words: str = "normal:100-300"
    """Passage length in words (``reranker_loadtest`` syntax, ``KIND:LOW-HIGH``)."""
    top_n: int = 5
    triton_url: str | None = None
    """Measure against this running Triton; otherwise one is started on ``repository``."""
    repository: Path | None = None
    """A cpu-profile repository; ``None``: the tiny test model's, exported into ``work_dir`` (reused)."""
    work_dir: Path = Path("bench-work/gateway")
    extra_gateway_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BenchmarkError(f"concurrency levels must be positive, got {self.concurrency}")
        for name in ("requests", "rounds", "candidates", "top_n"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchmarkError(f"warmup must be >= 0, got {self.warmup}")
        if self.requests < self.rounds:
            raise BenchmarkError(f"need at least one request per round: {self.requests} < {self.rounds}")


@dataclass(frozen=True, kw_only=True)
class PathResult:
    path: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    gateway_cpu_ms: float | None
    """CPU time of the gateway process per request (the gateway path only)."""
    triton_cpu_ms: float | None = None
    """CPU time of the Triton server per request (when the benchmark started it)."""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True, kw_only=True)
class LevelComparison:
    direct: PathResult
    gateway: PathResult

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.direct.p50_ms

    @property
    def throughput_loss(self) -> float:
        return 1.0 - self.gateway.per_second / self.direct.per_second

    @property
    def cpu_bound_loss(self) -> float | None:
        """The throughput a CPU-bound server loses to a gateway sharing its cores: gateway CPU over
        gateway plus Triton CPU per request. Steadier than the measured loss on a busy machine."""
        gateway, triton = self.gateway.gateway_cpu_ms, self.gateway.triton_cpu_ms
        if gateway is None or triton is None:
            return None
        return gateway / (gateway + triton)


@dataclass(frozen=True, kw_only=True)
class GatewayBenchReport:
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    levels: tuple[LevelComparison, ...]

    def missed(self) -> list[str]:
        """The targets this run missed, in words (empty: both met)."""
        missed = []
        for level in self.levels:
            if level.added_p50_ms > TARGET_ADDED_P50_MS:
                added = f"+{level.added_p50_ms:.2f} ms p50"
                missed.append(f"c={level.direct.concurrency}: {added} (target <= {TARGET_ADDED_P50_MS} ms)")
        top = max(self.levels, key=lambda level: level.direct.concurrency)
        if top.throughput_loss > TARGET_THROUGHPUT_LOSS:
            missed.append(
                f"c={top.direct.concurrency}: {top.throughput_loss:.1%} throughput lost "
                f"(target <= {TARGET_THROUGHPUT_LOSS:.0%})"
            )
        return missed

    def to_json(self) -> dict[str, Any]:
        levels = [
            {
                "concurrency": level.direct.concurrency,
                "direct": {**asdict(level.direct), "per_second": level.direct.per_second},
                "gateway": {**asdict(level.gateway), "per_second": level.gateway.per_second},
                "added_p50_ms": level.added_p50_ms,
                "throughput_loss": level.throughput_loss,
                "cpu_bound_loss": level.cpu_bound_loss,
            }
            for level in self.levels
        ]
        return {
            "command": self.command,
            "machine": self.machine,
            "settings": self.settings,
            "levels": levels,
            "missed": self.missed(),
        }


def format_gateway_report(report: GatewayBenchReport) -> str:
    lines = [
        f"{'c':>3}  {'path':<13} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'gw CPU ms/req':>14} {'Triton CPU':>11}",
    ]

    def cell(value: float | None, width: int) -> str:
        return f"{value:{width}.2f}" if value is not None else " " * width

    for level in report.levels:
        for result in (level.direct, level.gateway):
            lines.append(
                f"{result.concurrency:>3}  {result.path:<13} {result.per_second:8.1f} "
                f"{result.p50_ms:8.2f} {result.p95_ms:8.2f} {cell(result.gateway_cpu_ms, 14)} "
                f"{cell(result.triton_cpu_ms, 11)}"
            )
        estimate = f", CPU-bound estimate {-level.cpu_bound_loss:+.1%}" if level.cpu_bound_loss is not None else ""
        lines.append(
            f"{'':>3}  added p50 {level.added_p50_ms:+.2f} ms, throughput {-level.throughput_loss:+.1%} "
            f"(gateway/direct {1 - level.throughput_loss:.3f}){estimate}"
        )
    missed = report.missed()
    lines.append("targets: met" if not missed else "targets missed: " + "; ".join(missed))
    return "\n".join(lines)


# -- the two paths --------------------------------------------------------------------------------

Call = Callable[[int], Awaitable[None]]


async def _run(call: Call, *, concurrency: int, indices: list[int]) -> tuple[float, list[float]]:
    """Send ``indices`` with ``concurrency`` in flight; (wall seconds, latencies)."""
    queue = iter(indices)
    latencies: list[float] = []

    async def worker() -> None:
        for index in queue:
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def _measure(
    settings: GatewayBenchSettings,
    triton_url: str,
    gateway_url: str,
    gateway_cpu: Callable[[], float],
    triton_cpu: Callable[[], float] | None,
    say: Progress,
) -> tuple[LevelComparison, ...]:
    import aiohttp

    from reranker_client import AsyncRerankerClient
    from reranker_loadtest.workload import LengthDistribution, Workload, WorkloadSettings

    lengths = LengthDistribution.parse(settings.document_words)
    workload = Workload(WorkloadSettings(candidates=settings.candidates, document_words=lengths))
    pool = workload.requests(64)  # payloads reused round-robin: generation stays out of the timing
    bodies = [
        json.dumps({"query": r.query, "documents": list(r.documents), "top_n": settings.top_n}).encode() for r in pool
    ]
    endpoint = f"{gateway_url}/v1/rerank"
    headers = {"content-type": "application/json"}
    levels = []
    async with (
        AsyncRerankerClient(triton_url, timeout=600) as client,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
        ) as session,
    ):

        async def direct(index: int) -> None:
            request = pool[index % len(pool)]
            hits = await client.rerank(request.query, request.documents, top_n=settings.top_n, normalize=True)
            if len(hits) != settings.top_n:
                raise BenchmarkError(f"direct: {len(hits)} results, expected {settings.top_n}")

        async def gateway(index: int) -> None:
            async with session.post(endpoint, data=bodies[index % len(bodies)], headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise BenchmarkError(f"gateway: HTTP {response.status}: {body[:300]!r}")
            if len(json.loads(body)["results"]) != settings.top_n:
                raise BenchmarkError("gateway: wrong number of results")

        say(f"warm-up: {settings.warmup} requests on each path")
        for call in (direct, gateway):
            await _run(call, concurrency=max(settings.concurrency), indices=list(range(settings.warmup)))
        for concurrency in settings.concurrency:
            per_round = settings.requests // settings.rounds
            # Per path: wall seconds, latencies, gateway CPU seconds, Triton CPU seconds.
            empty: tuple[float, list[float], float, float] = (0.0, [], 0.0, 0.0)
            samples = {DIRECT: empty, GATEWAY: empty}
            server_cpu = triton_cpu or (lambda: 0.0)
            for round_number in range(settings.rounds):
                indices = list(range(round_number * per_round, (round_number + 1) * per_round))
                for name, call in ((DIRECT, direct), (GATEWAY, gateway)):
                    cpu_before, server_before = gateway_cpu(), server_cpu()
                    seconds, latencies = await _run(call, concurrency=concurrency, indices=indices)
                    total, kept, cpu, server = samples[name]
                    samples[name] = (
                        total + seconds,
                        kept + latencies,
                        cpu + gateway_cpu() - cpu_before,
                        server + server_cpu() - server_before,
                    )
            results = {}
            for name, (seconds, latencies, cpu, server) in samples.items():
                results[name] = PathResult(
                    path=name,
                    concurrency=concurrency,
                    requests=len(latencies),
                    seconds=seconds,
                    p50_ms=statistics.median(latencies) * 1000,
                    p95_ms=_percentile(latencies, 0.95),
                    gateway_cpu_ms=cpu / len(latencies) * 1000 if name == GATEWAY else None,
                    triton_cpu_ms=server / len(latencies) * 1000 if triton_cpu is not None else None,
                )
            level = LevelComparison(direct=results[DIRECT], gateway=results[GATEWAY])
            say(
                f"c={concurrency}: direct {level.direct.p50_ms:.2f} ms p50, {level.direct.per_second:.1f}/s; "
                f"gateway {level.gateway.p50_ms:.2f} ms p50, {level.gateway.per_second:.1f}/s"
            )
            levels.append(level)
    return tuple(levels)


# -- servers ----------------------------------------------------------------------------------------


def _test_repository(work_dir: Path, say: Progress) -> Path:
    """The ``MODEL=test`` quickstart's repository: the tiny trained test model, cpu profile (reused)."""
    from reranker_export.manifest import MANIFEST_FILENAME
    from reranker_export.pipeline import ExportSettings, export_model
    from reranker_export.settings import Profile, ServingSettings
    from reranker_export.testmodels import TestModelKind, build_test_model

    repository = work_dir / "model_repository"
    if (repository / MANIFEST_FILENAME).is_file():
        say(f"reusing {repository}")
        return repository
    model_dir = work_dir / "test-model"
    if not (model_dir / "config.json").is_file():
        build_test_model(model_dir, kind=TestModelKind.XLM_ROBERTA, progress=say)
    settings = ExportSettings(
        model=str(model_dir), output=repository, serving=ServingSettings(profile=Profile.CPU), force=True
    )
    return export_model(settings, progress=say).repository


@contextmanager
def _gateway(triton_url: str, log_path: Path, extra: tuple[str, ...]) -> Iterator[tuple[str, int]]:
    import requests

    port = free_port()
    command = [sys.executable, "-m", "reranker_gateway", "--triton", triton_url, "--port", str(port)]
    command += ["--log-level", "warning", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise BenchmarkError(f"the gateway exited with {process.returncode} (log: {log_path})")
            try:
                if requests.get(f"{url}/livez", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the gateway did not answer within 60 s (log: {log_path})")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_gateway_benchmark(settings: GatewayBenchSettings, *, command: str, progress: Progress) -> GatewayBenchReport:
    from .machine import machine_info
    from .measure import process_tree_cpu

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    log = settings.work_dir / "gateway.log"
    with (
        _triton(settings, progress) as (triton_url, triton_pid),
        _gateway(triton_url, log, settings.extra_gateway_args) as gateway,
    ):
        url, pid = gateway
        progress(f"gateway {url} (pid {pid}) -> Triton {triton_url}")
        triton_cpu = process_tree_cpu(triton_pid) if triton_pid is not None else None
        levels = asyncio.run(_measure(settings, triton_url, url, process_tree_cpu(pid), triton_cpu, progress))
    described = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    return GatewayBenchReport(command=command, machine=machine_info(), settings=described, levels=levels)


@contextmanager
def _triton(settings: GatewayBenchSettings, say: Progress) -> Iterator[tuple[str, int | None]]:
    """Triton's gRPC URL, and its pid when this benchmark started it."""
    if settings.triton_url is not None:
        yield settings.triton_url, None
        return
    from reranker_serve import TritonServer

    repository = settings.repository or _test_repository(settings.work_dir, say)
    say(f"starting Triton on {repository}")
    with TritonServer(repository, log_file=settings.work_dir / "tritonserver.log") as server:
        yield server.grpc_url, server.pid
