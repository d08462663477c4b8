"""``reranker-bench compare``: this deployment against the reference stack, side by side, one run.

(a) this project: Triton with the exported ``cpu`` profile (tokenizer step, onnxruntime
model step, dynamic batching), called through ``reranker_client`` over gRPC;
(b) the reference stack the guides for bge-reranker-v2-m3 describe: FastAPI ``POST
/v1/rerank`` wrapping FlagEmbedding's ``FlagReranker.compute_score`` (PyTorch) under uvicorn
(:mod:`reranker_bench.reference`), called with JSON over HTTP.

Both load the same weights from the same directory, get the same cores and threads, and
serve the same request sequence from the same client process: ``c`` closed-loop workers
(threads) take the next request of the workload until the level's requests are done.
For every concurrency level the two systems run back to back (the order alternates
between levels) and the report gives pairs per second, p50/p95/p99 latency and the
ratios (a)/(b).

CPU mode builds an XLM-R cross-encoder with random weights sized so that compute
dominates (6 layers, hidden 384, 12 heads); GPU mode uses the full bge-reranker-v2-m3
architecture (24 layers, hidden 1024) in FP16 and needs a CUDA GPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from reranker_common import Progress
from reranker_loadtest.workload import Workload, WorkloadSettings

from .breakdown import Breakdown, time_breakdown
from .errors import BenchmarkError
from .machine import machine_info
from .measure import (
    SYSTEM_REFERENCE,
    SYSTEM_TRITON,
    Comparison,
    check_parity,
    process_tree_cpu,
    reference_caller,
    run_level,
    triton_caller,
)
from .models import Architecture, build_bench_model, export_repository
from .reference import Scheduling, reference_server


class Device(str, Enum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    device: Device = Device.CPU
    concurrency: tuple[int, ...] = (1, 4, 16)
    rounds: int = 1
    """Requests per level = max(``min_requests``, ``rounds`` x concurrency)."""
    min_requests: int = 4
    warmup_requests: int = 2
    """Requests sent to each system once, before any measurement (not counted)."""
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    threads: int | None = None
    """Compute threads of each system (onnxruntime intra-op, PyTorch); ``None``: every core."""
    length_buckets: tuple[int, ...] = (64, 128, 192, 256, 320, 384, 448, 512)
    """Padding buckets of the Triton tokenizer step for this run (FlagReranker pads to the longest pair)."""
    reference_scheduling: Scheduling = Scheduling.SERIAL
    work_dir: Path = Path("bench-work")
    """Model and repository (reused when present with the same architecture)."""
    output_dir: Path = Path("bench-results")
    triton_url: str | None = None
    """Benchmark an already running Triton (serving ``work_dir``'s repository) instead of starting one."""
    request_timeout_s: float = 1800.0
    parity_tolerance: float | None = None
    """Largest accepted |score(a) - score(b)| on the check request; ``None``: 1e-3 FP32, 5e-2 FP16."""
    seed: int = 0
    """Seed of the random weights."""
    breakdown: bool = False
    """After the comparison, time each part of both stacks in-process (CPU mode)."""
    repository: Path | None = None
    """Serve this model repository (exported from ``work_dir``'s model) instead of exporting one."""

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BenchmarkError(f"concurrency levels must be positive, got {self.concurrency}")
        if self.rounds < 1 or self.min_requests < 1 or self.warmup_requests < 0:
            raise BenchmarkError("rounds and min_requests must be positive, warmup_requests >= 0")
        if self.threads is not None and self.threads < 1:
            raise BenchmarkError(f"threads must be positive, got {self.threads}")

    @property
    def architecture(self) -> Architecture:
        return Architecture.cpu_bench() if self.device is Device.CPU else Architecture.bge_reranker_v2_m3()

    @property
    def effective_threads(self) -> int:
        return self.threads if self.threads is not None else (os.cpu_count() or 1)

    @property
    def effective_tolerance(self) -> float:
        if self.parity_tolerance is not None:
            return self.parity_tolerance
        return 1e-3 if self.device is Device.CPU else 5e-2

    @property
    def model_dir(self) -> Path:
        return self.work_dir / "model"

    @property
    def repository_dir(self) -> Path:
        return self.work_dir / "repository"

    def requests_at(self, concurrency: int) -> int:
        return max(self.min_requests, self.rounds * concurrency)

    def describe(self) -> dict[str, Any]:
        """The settings as the report records them."""
        return {
            "device": self.device.value,
            "architecture": asdict(self.architecture),
            "concurrency": list(self.concurrency),
            "requests_per_level": {str(c): self.requests_at(c) for c in self.concurrency},
            "warmup_requests": self.warmup_requests,
            "workload": dict(self.workload.describe()),
            "threads": self.effective_threads,
            "length_buckets": list(self.length_buckets),
            "reference_scheduling": self.reference_scheduling.value,
            "triton_url": self.triton_url,
            "repository": str(self.repository) if self.repository is not None else None,
        }


@dataclass(frozen=True, kw_only=True)
class BenchReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    parity_max_abs_diff: float
    comparisons: tuple[Comparison, ...]
    command: str
    breakdown: Breakdown | None = None
    """Median wall and CPU seconds per request of each part of both stacks (``--breakdown``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "command": self.command,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "breakdown_s": self.breakdown,
            "levels": [
                {
                    "concurrency": c.concurrency,
                    "triton": asdict(c.triton),
                    "reference": asdict(c.reference),
                    "throughput_ratio": c.throughput_ratio,
                    "p50_ratio": c.latency_ratio("p50_ms"),
                    "p95_ratio": c.latency_ratio("p95_ms"),
                    "p99_ratio": c.latency_ratio("p99_ms"),
                    "server_cpu_ratio": c.cpu_ratio,
                }
                for c in self.comparisons
            ],
        }


def prepare(settings: BenchSettings, *, progress: Progress = print) -> tuple[Path, Path]:
    """Build (or reuse) the benchmark model and export (or reuse) its repository: (model, repository)."""
    from reranker_export.settings import Profile, ServingSettings, TokenizerSettings

    model_dir = build_bench_model(settings.model_dir, settings.architecture, seed=settings.seed, progress=progress)
    serving = ServingSettings(
        profile=Profile.CPU if settings.device is Device.CPU else Profile.TENSORRT,
        tokenizer=TokenizerSettings(length_buckets=settings.length_buckets),
        ort_intra_op_threads=settings.effective_threads,
    )
    repo_dir = export_repository(model_dir, settings.repository_dir, serving, reuse=True, progress=progress)
    return model_dir, repo_dir


def compare(
    settings: BenchSettings,
    *,
    triton_url: str,
    reference_url: str,
    triton_pid: int | None = None,
    reference_pid: int | None = None,
    progress: Progress = print,
) -> tuple[float, tuple[Comparison, ...]]:
    """Measure both running systems at every concurrency level; returns (parity diff, comparisons).

    With the servers' pids (local servers), each level also reports the CPU time they used.
    """
    workload = Workload(settings.workload)
    timeout = settings.request_timeout_s
    make_triton = triton_caller(triton_url, timeout)
    make_reference = reference_caller(reference_url, timeout)
    diff = check_parity(workload, make_triton(), make_reference(), settings.effective_tolerance)
    progress(f"parity: max |score(a) - score(b)| = {diff:.2e} on request 0")
    callers = {SYSTEM_TRITON: make_triton, SYSTEM_REFERENCE: make_reference}
    pids = {SYSTEM_TRITON: triton_pid, SYSTEM_REFERENCE: reference_pid}
    cpu = {system: process_tree_cpu(pid) if pid is not None else None for system, pid in pids.items()}
    if settings.warmup_requests:
        for system, make in callers.items():
            progress(f"warm-up: {settings.warmup_requests} requests to {system}")
            run_level(
                system,
                make,
                workload,
                concurrency=1,
                requests=settings.warmup_requests,
                start_index=1_000_000,
            )
    comparisons = []
    for n, concurrency in enumerate(settings.concurrency):
        requests = settings.requests_at(concurrency)
        order = [SYSTEM_TRITON, SYSTEM_REFERENCE] if n % 2 == 0 else [SYSTEM_REFERENCE, SYSTEM_TRITON]
        results = {}
        for system in order:
            progress(f"concurrency {concurrency}: {requests} requests to {system} ...")
            result = run_level(
                system, callers[system], workload, concurrency=concurrency, requests=requests, server_cpu=cpu[system]
            )
            cpu_note = f", server CPU {result.cpu_s_per_request:.2f} s/request" if result.cpu_s_per_request else ""
            progress(
                f"  {system}: {result.pairs_per_s:.1f} pairs/s, p50 {result.p50_ms:.0f} / "
                f"p95 {result.p95_ms:.0f} / p99 {result.p99_ms:.0f} ms, "
                f"{result.failures} failures in {result.wall_s:.1f} s{cpu_note}"
            )
            results[system] = result
        comparisons.append(
            Comparison(concurrency=concurrency, triton=results[SYSTEM_TRITON], reference=results[SYSTEM_REFERENCE])
        )
    return diff, tuple(comparisons)


def check_device(settings: BenchSettings) -> None:
    """GPU mode needs a visible CUDA GPU and a Triton the user started; fails before anything is built."""
    if settings.device is not Device.GPU:
        return
    import torch

    if not torch.cuda.is_available():
        raise BenchmarkError(
            "GPU mode needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); run with --device cpu"
        )
    if settings.triton_url is None:
        raise BenchmarkError(
            "GPU mode benchmarks a Triton you start from the NGC image on the repository this command "
            "exports: run it once with --prepare-only, serve the repository, then pass --triton-url"
        )


def run_benchmark(settings: BenchSettings, *, command: str = "", progress: Progress = print) -> BenchReport:
    """Build the model, export it, start both systems, measure, and return the report."""
    check_device(settings)
    threads = settings.effective_threads
    if settings.repository is not None:
        model_dir = build_bench_model(settings.model_dir, settings.architecture, seed=settings.seed, progress=progress)
        repo_dir = settings.repository
        progress(f"serving the given repository {repo_dir}")
    else:
        model_dir, repo_dir = prepare(settings, progress=progress)
    logs = settings.output_dir / "logs"
    on_gpu = settings.device is Device.GPU
    with contextlib.ExitStack() as stack:
        triton_pid: int | None = None
        if settings.triton_url is not None:
            triton_url = settings.triton_url
        else:
            from reranker_serve import ServeError, TritonServer

            progress(f"starting Triton on {repo_dir}")
            logs.mkdir(parents=True, exist_ok=True)
            try:
                server = stack.enter_context(TritonServer(repo_dir, log_file=logs / "tritonserver.log"))
            except ServeError as exc:
                raise BenchmarkError(f"Triton did not start: {exc}") from exc
            triton_url = server.grpc_url
            triton_pid = server.pid
        progress(f"starting the reference server (FastAPI + FlagReranker, {threads} torch threads)")
        reference = stack.enter_context(
            reference_server(
                model_dir,
                device="cuda:0" if on_gpu else "cpu",
                fp16=on_gpu,
                threads=threads,
                scheduling=settings.reference_scheduling,
                log_path=logs / "reference.log",
            )
        )
        diff, comparisons = compare(
            settings,
            triton_url=triton_url,
            reference_url=reference.url,
            triton_pid=triton_pid,
            reference_pid=reference.pid,
            progress=progress,
        )
    breakdown = None
    if settings.breakdown and not on_gpu:  # both servers are down: the breakdown has the cores to itself
        breakdown = run_breakdown(settings, progress=progress)
    return BenchReport(
        settings=settings.describe(),
        machine=machine_info(gpu=on_gpu),
        parity_max_abs_diff=diff,
        comparisons=comparisons,
        command=command,
        breakdown=breakdown,
    )


def run_breakdown(settings: BenchSettings, *, progress: Progress = print) -> Breakdown:
    """:func:`~reranker_bench.breakdown.time_breakdown` on the benchmark's model and exported ONNX file (CPU)."""
    from reranker_export.repository import ONNX_FILENAME, VERSION
    from reranker_export.settings import CORE_MODEL_NAME

    if settings.device is not Device.CPU:
        raise BenchmarkError("the in-process breakdown runs in CPU mode only")
    onnx_path = settings.repository_dir / CORE_MODEL_NAME / VERSION / ONNX_FILENAME
    if not onnx_path.is_file():
        raise BenchmarkError(f"no exported model at {onnx_path}: run the benchmark (or --prepare-only) first")
    return time_breakdown(
        settings.model_dir,
        onnx_path,
        Workload(settings.workload),
        threads=settings.effective_threads,
        progress=progress,
    )
