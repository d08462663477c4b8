"""``reranker-bench``: this deployment against the reference stack, side by side, one run.

(a) this project: Triton with the exported ``cpu`` profile (tokenizer step, onnxruntime
model step, dynamic batching), called through ``reranker_client`` over gRPC;
(b) the reference stack the guides for bge-reranker-v2-m3 describe: FastAPI ``POST
/v1/rerank`` wrapping FlagEmbedding's ``FlagReranker.compute_score`` (PyTorch) under uvicorn
(:mod:`reranker_loadtest.reference_server`), called with JSON over HTTP.

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

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchmarkError, LoadtestError
from .reference_server import Scheduling
from .workload import Workload, WorkloadSettings

PROG = "reranker-bench"

SYSTEM_TRITON = "triton"
SYSTEM_REFERENCE = "reference"

# The tokenizer the benchmark model uses is trained on text from the workload's own word
# lists (a different seed than the measured requests), sized to cut words into ~1.2 pieces,
# the order of XLM-R's 250k-piece vocabulary on natural text.
BENCH_TOKENIZER_VOCAB = 2500
BENCH_TOKENIZER_SEED = 1


class Device(str, Enum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """XLMRobertaForSequenceClassification shape (one output logit)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    max_positions: int = 514
    vocab_size: int | None = None
    """``None``: the tokenizer's size."""

    @classmethod
    def cpu_bench(cls) -> Architecture:
        return cls(layers=6, hidden=384, heads=12, intermediate=1536)

    @classmethod
    def bge_reranker_v2_m3(cls) -> Architecture:
        """The full-size architecture of BAAI/bge-reranker-v2-m3 (~568M parameters)."""
        return cls(layers=24, hidden=1024, heads=16, intermediate=4096, max_positions=8194, vocab_size=250002)


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

    def requests_at(self, concurrency: int) -> int:
        return max(self.min_requests, self.rounds * concurrency)


# -- results -------------------------------------------------------------------------------


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


ScoreCall = Callable[[str, Sequence[str]], Sequence[float]]


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


# -- the two systems -----------------------------------------------------------------------


def triton_caller(url: str, timeout_s: float) -> Callable[[], ScoreCall]:
    from reranker_client import RerankerClient, RetryPolicy

    # One client for every worker, as the client's documentation asks (it is thread-safe).
    client = RerankerClient(url, timeout=timeout_s, retries=RetryPolicy.disabled())

    def call(query: str, documents: Sequence[str]) -> Sequence[float]:
        return [float(s) for s in client.score(query, documents)]

    return lambda: call


def reference_caller(base_url: str, timeout_s: float) -> Callable[[], ScoreCall]:
    import requests

    def make() -> ScoreCall:
        session = requests.Session()  # one keep-alive connection per worker

        def call(query: str, documents: Sequence[str]) -> Sequence[float]:
            response = session.post(
                f"{base_url}/v1/rerank",
                json={"query": query, "documents": list(documents)},
                timeout=timeout_s,
            )
            response.raise_for_status()
            return [float(s) for s in response.json()["scores"]]

        return call

    return make


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RunningReference:
    url: str
    """Base URL, ``http://127.0.0.1:PORT``."""
    pid: int


@contextlib.contextmanager
def reference_server(
    model_dir: Path,
    *,
    device: str,
    fp16: bool,
    threads: int,
    scheduling: Scheduling,
    log_path: Path,
    max_length: int = 512,
    startup_timeout_s: float = 300.0,
) -> Iterator[RunningReference]:
    """Start the FastAPI + FlagReranker server on a free loopback port; yield its URL and pid."""
    port = _free_port()
    command = [
        sys.executable, "-m", "reranker_loadtest.reference_server",
        "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--device", device, "--threads", str(threads), "--scheduling", scheduling.value,
        "--max-length", str(max_length),
    ]  # fmt: skip
    if fp16:
        command.append("--fp16")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise BenchmarkError(f"reference server exited with {process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError(f"reference server not up after {startup_timeout_s:g} s (log: {log_path})")
            time.sleep(0.5)  # polling interval while the server starts, bounded by the deadline
        yield RunningReference(url=base_url, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- model and repository ------------------------------------------------------------------


def train_bench_tokenizer(output_dir: Path, *, vocab_size: int = BENCH_TOKENIZER_VOCAB) -> Any:
    """An XLM-R style (Unigram, ``<s> q </s></s> p </s>``) tokenizer trained on workload text.

    Built like ``reranker_export.testmodels``'s tokenizer, on text from the workload's word
    lists, so the benchmark's passages cut into about as many tokens as XLM-R's would.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    texts = [
        d
        for r in Workload(
            WorkloadSettings(seed=BENCH_TOKENIZER_SEED, candidates=10, foreign_document_ratio=0)
        ).requests(120)
        for d in r.documents
    ]
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=special, unk_token="<unk>", show_progress=False
    )
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: a reproducible vocabulary
    try:
        backend.train_from_iterator(texts, trainer=trainer)
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    vocab = [(piece, score) for piece, score in json.loads(backend.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizerFast(vocab=vocab, model_max_length=512)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def build_bench_model(
    model_dir: Path, architecture: Architecture, *, seed: int = 0, progress: Callable[[str], None] = print
) -> Path:
    """Save a random-weight XLMRobertaForSequenceClassification and its tokenizer to ``model_dir``.

    Reused when ``model_dir`` already holds the same architecture and seed.
    """
    marker = model_dir / "bench-architecture.json"
    wanted = {**asdict(architecture), "seed": seed, "tokenizer_vocab": BENCH_TOKENIZER_VOCAB}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        progress(f"reusing the benchmark model in {model_dir}")
        return model_dir
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    progress("training the benchmark tokenizer on workload text")
    tokenizer = train_bench_tokenizer(model_dir)
    config = XLMRobertaConfig(
        vocab_size=architecture.vocab_size or len(tokenizer),
        hidden_size=architecture.hidden,
        num_hidden_layers=architecture.layers,
        num_attention_heads=architecture.heads,
        intermediate_size=architecture.intermediate,
        max_position_embeddings=architecture.max_positions,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.num_labels = 1  # one relevance logit per pair
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XLMRobertaForSequenceClassification(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    progress(
        f"built XLM-R {architecture.layers}x{architecture.hidden} with random weights "
        f"({n_params / 1e6:.1f}M parameters)"
    )
    model.save_pretrained(model_dir)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return model_dir


def export_repository(
    settings: BenchSettings, model_dir: Path, repo_dir: Path, progress: Callable[[str], None] = print
) -> Path:
    """Export ``model_dir`` with the project's exporter (``cpu`` profile on CPU, ``tensorrt`` on GPU)."""
    from reranker_export.pipeline import ExportSettings, export_model
    from reranker_export.settings import Profile, ServingSettings, TokenizerSettings

    profile = Profile.CPU if settings.device is Device.CPU else Profile.TENSORRT
    serving = ServingSettings(
        profile=profile,
        tokenizer=TokenizerSettings(length_buckets=settings.length_buckets),
        ort_intra_op_threads=settings.effective_threads,
    )
    marker = repo_dir / "bench-export.json"
    # Every serving setting (defaults included) is part of the key: a changed default re-exports.
    wanted = {
        "model": json.loads((model_dir / "bench-architecture.json").read_text()),
        "serving": json.loads(json.dumps(asdict(serving), default=str)),
    }
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        progress(f"reusing the exported repository in {repo_dir}")
        return repo_dir
    from reranker_export.errors import ExportError

    try:
        export_model(
            ExportSettings(model=str(model_dir), output=repo_dir, serving=serving, force=True),
            progress=progress,
        )
    except ExportError as exc:
        raise BenchmarkError(f"export of the benchmark model failed: {exc}") from exc
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return repo_dir


# -- where the time goes -------------------------------------------------------------------


def time_breakdown(
    model_dir: Path,
    onnx_path: Path,
    workload: Workload,
    *,
    threads: int,
    max_length: int = 512,
    requests: int = 3,
    sub_batch_rows: int = 8,
    progress: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per request of each part of the two stacks, in this process.

    ``flagreranker_compute_score``: the reference's whole call; ``hf_tokenize_pairs``: one
    tokenizer call on the 50 pairs (padding to the longest, as FlagReranker pads);
    ``torch_forward``: one PyTorch forward on that batch; ``onnxruntime_forward``: one
    onnxruntime run of the exported model on the same batch, with the session options of the
    ``cpu`` profile (sequential executor, no spinning); ``onnxruntime_sorted_sub_batches``: the
    same rows sorted by length and run ``sub_batch_rows`` at a time, each sub-batch padded to its
    own longest row (what padding costs). CPU seconds count every thread of this process, so
    other tenants of the machine barely move them.
    """
    import onnxruntime as ort
    import torch
    from FlagEmbedding import FlagReranker

    torch.set_num_threads(threads)
    reranker = FlagReranker(str(model_dir), devices=["cpu"], max_length=max_length)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    parts: dict[str, list[tuple[float, float]]] = {}
    tokens: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args, **kwargs)
        parts.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))
        return value

    def sorted_sub_batches(feed: dict[str, np.ndarray], lengths: np.ndarray) -> None:
        order = np.argsort(lengths, kind="stable")
        for chunk in np.array_split(order, max(1, -(-len(order) // sub_batch_rows))):
            width = int(lengths[chunk].max())
            session.run(None, {k: v[chunk, :width] for k, v in feed.items()})

    for index in range(requests + 1):  # request 0 warms every path up and is not counted
        request = workload.request(index)
        progress(f"breakdown: request {index} ({'warm-up' if index == 0 else 'measured'})")
        timed("flagreranker_compute_score", reranker.compute_score, [[request.query, d] for d in request.documents])
        batch = timed(
            "hf_tokenize_pairs",
            reranker.tokenizer,
            [request.query] * len(request.documents),
            list(request.documents),
            padding=True,
            truncation="only_second",
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            timed("torch_forward", reranker.model, **batch)
        feed = {k: v.numpy() for k, v in batch.items() if k in input_names}
        lengths = batch["attention_mask"].numpy().sum(axis=1)
        timed("onnxruntime_forward", session.run, None, feed)
        timed("onnxruntime_sorted_sub_batches", sorted_sub_batches, feed, lengths)
        tokens.setdefault("padded", []).append(float(batch["input_ids"].numel()))
        tokens.setdefault("real", []).append(float(lengths.sum()))
        if index == 0:
            parts.clear()
            tokens.clear()
    result = {
        name: {"wall_s": float(np.median([w for w, _ in v])), "cpu_s": float(np.median([c for _, c in v]))}
        for name, v in parts.items()
    }
    result["tokens_per_request"] = {name: float(np.median(v)) for name, v in tokens.items()}
    return result


# -- the run -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BenchReport:
    settings: dict[str, Any]
    machine: dict[str, Any]
    parity_max_abs_diff: float
    comparisons: tuple[Comparison, ...]
    command: str
    breakdown: dict[str, dict[str, float]] | None = None
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


def machine_info(device: Device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
    }
    versions = {}
    for package in (
        "torch",
        "onnxruntime",
        "transformers",
        "FlagEmbedding",
        "tritonclient",
        "nvidia-pytriton",
        "fastapi",
        "uvicorn",
    ):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    info["versions"] = versions
    if device is Device.GPU:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


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


def compare(
    settings: BenchSettings,
    *,
    triton_url: str,
    reference_url: str,
    triton_pid: int | None = None,
    reference_pid: int | None = None,
    progress: Callable[[str], None] = print,
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


def run_benchmark(
    settings: BenchSettings, *, command: str = "", progress: Callable[[str], None] = print
) -> BenchReport:
    """Build the model, export it, start both systems, measure, and return the report."""
    if settings.device is Device.GPU:
        import torch

        if not torch.cuda.is_available():
            raise BenchmarkError(
                "GPU mode needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
                "run with --device cpu"
            )
        if settings.triton_url is None:
            raise BenchmarkError(
                "GPU mode benchmarks a Triton you start from the NGC image on the repository this command "
                "exports: run it once with --prepare-only, serve the repository, then pass --triton-url"
            )
    threads = settings.effective_threads
    model_dir = build_bench_model(
        settings.work_dir / "model", settings.architecture, seed=settings.seed, progress=progress
    )
    if settings.repository is not None:
        repo_dir = settings.repository
        progress(f"serving the given repository {repo_dir}")
    else:
        repo_dir = export_repository(settings, model_dir, settings.work_dir / "repository", progress=progress)
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
        settings=_settings_dict(settings),
        machine=machine_info(settings.device),
        parity_max_abs_diff=diff,
        comparisons=comparisons,
        command=command,
        breakdown=breakdown,
    )


def run_breakdown(settings: BenchSettings, *, progress: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """:func:`time_breakdown` on the benchmark's model and exported ONNX file (CPU)."""
    model_dir = settings.work_dir / "model"
    onnx_path = settings.work_dir / "repository" / "reranker_model" / "1" / "model.onnx"
    if not onnx_path.is_file():
        raise BenchmarkError(f"no exported model at {onnx_path}: run the benchmark (or --prepare-only) first")
    return time_breakdown(
        model_dir,
        onnx_path,
        Workload(settings.workload),
        threads=settings.effective_threads,
        progress=progress,
    )


def _settings_dict(settings: BenchSettings) -> dict[str, Any]:
    return {
        "device": settings.device.value,
        "architecture": asdict(settings.architecture),
        "concurrency": list(settings.concurrency),
        "requests_per_level": {str(c): settings.requests_at(c) for c in settings.concurrency},
        "warmup_requests": settings.warmup_requests,
        "workload": dict(settings.workload.describe()),
        "threads": settings.effective_threads,
        "length_buckets": list(settings.length_buckets),
        "reference_scheduling": settings.reference_scheduling.value,
        "triton_url": settings.triton_url,
        "repository": str(settings.repository) if settings.repository is not None else None,
    }


# -- reporting -----------------------------------------------------------------------------


def format_table(comparisons: Sequence[Comparison]) -> str:
    header = ("c", "system", "pairs/s", "p50 ms", "p95 ms", "p99 ms", "fail", "CPU s/req", "thr (a)/(b)",
              "p95 (a)/(b)", "CPU (b)/(a)")  # fmt: skip
    rows = [header]
    for c in comparisons:
        for label, r in (("(a) triton", c.triton), ("(b) reference", c.reference)):
            ratios = (
                (f"{c.throughput_ratio:.2f}x", f"{c.latency_ratio('p95_ms'):.2f}", f"{c.cpu_ratio:.2f}x")
                if r is c.triton
                else ("", "", "")
            )
            rows.append(
                (str(c.concurrency), label, f"{r.pairs_per_s:.1f}", f"{r.p50_ms:.0f}", f"{r.p95_ms:.0f}",
                 f"{r.p99_ms:.0f}", f"{r.failures}/{r.requests}", _cpu_cell(r), *ratios)
            )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.rjust(w) if i and j != 1 else cell.ljust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(report: BenchReport) -> str:
    m = report.machine
    lines = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; {m.get('platform')}",
        "",
        "| concurrency | system | pairs/s | p50 ms | p95 ms | p99 ms | failures | server CPU s/request "
        "| throughput (a)/(b) | p50 (a)/(b) | p95 (a)/(b) | p99 (a)/(b) | server CPU (b)/(a) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.comparisons:
        for label, r in (("(a) Triton", c.triton), ("(b) reference", c.reference)):
            if r is c.triton:
                ratios = (f"**{c.throughput_ratio:.2f}x**", f"{c.latency_ratio('p50_ms'):.2f}",
                          f"{c.latency_ratio('p95_ms'):.2f}", f"{c.latency_ratio('p99_ms'):.2f}",
                          f"{c.cpu_ratio:.2f}x")  # fmt: skip
            else:
                ratios = ("", "", "", "", "")
            lines.append(
                f"| {c.concurrency} | {label} | {r.pairs_per_s:.1f} | {r.p50_ms:.0f} | {r.p95_ms:.0f} "
                f"| {r.p99_ms:.0f} | {r.failures}/{r.requests} | {_cpu_cell(r)} | " + " | ".join(ratios) + " |"
            )
    lines += ["", f"Score parity on request 0: max |a - b| = {report.parity_max_abs_diff:.2e}."]
    if report.breakdown:
        lines += ["", format_breakdown(report.breakdown)]
    if report.command:
        lines += ["", f"Command: `{report.command}`"]
    return "\n".join(lines) + "\n"


def _cpu_cell(result: LevelResult) -> str:
    per_request = result.cpu_s_per_request
    return f"{per_request:.2f}" if per_request is not None else "n/a"


def format_breakdown(breakdown: dict[str, dict[str, float]]) -> str:
    """The in-process parts as a markdown table (median per request)."""
    lines = ["| part (in-process, one request at a time) | wall s | CPU s |", "|---|---:|---:|"]
    for name, value in breakdown.items():
        if name == "tokens_per_request":
            continue
        lines.append(f"| {name} | {value['wall_s']:.2f} | {value['cpu_s']:.2f} |")
    tokens = breakdown.get("tokens_per_request", {})
    if tokens:
        lines += ["", f"Tokens per request: {tokens.get('real', 0):.0f} real, {tokens.get('padded', 0):.0f} "
                  "after padding to the longest pair."]  # fmt: skip
    return "\n".join(lines)


def write_report(report: BenchReport, output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "bench.json"
    md_path = output_dir / "bench.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(format_markdown(report), encoding="utf-8")
    return json_path, md_path


# -- CLI -----------------------------------------------------------------------------------


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Benchmark this deployment (Triton, cpu profile) against the reference stack "
            "(FastAPI + FlagReranker + uvicorn) side by side: same machine, weights and workload. "
            "Reports pairs/s, p50/p95/p99 and the ratios (a)/(b) per concurrency level."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--device",
        choices=[d.value for d in Device],
        default=Device.CPU.value,
        help="cpu: 6-layer/384 XLM-R; gpu: full-size bge-reranker-v2-m3 architecture in FP16 (needs CUDA)",
    )
    parser.add_argument("--concurrency", type=_levels, default=(1, 4, 16), help="comma-separated levels")
    parser.add_argument(
        "--rounds", type=int, default=1, help="requests per level = max(min-requests, rounds x concurrency)"
    )
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--warmup-requests", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=50, help="passages per request")
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default: the workload's)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads per system (default: every core)")
    parser.add_argument(
        "--reference-scheduling",
        choices=[s.value for s in Scheduling],
        default=Scheduling.SERIAL.value,
        help="how the reference server runs concurrent requests",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("bench-work"), help="benchmark model and repository (reused)"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("bench-results"), help="bench.json, bench.md and server logs"
    )
    parser.add_argument(
        "--triton-url", default=None, help="use this running Triton (host:port) instead of starting one"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="serve this repository (exported from the work dir's model) instead of exporting one",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="then time each part of both stacks in-process (CPU mode)"
    )
    parser.add_argument(
        "--breakdown-only", action="store_true", help="only the in-process breakdown (model and repository exist)"
    )
    parser.add_argument(
        "--prepare-only", action="store_true", help="build the model and export the repository, then exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    try:
        workload = WorkloadSettings(
            candidates=args.candidates, **({"seed": args.seed} if args.seed is not None else {})
        )
        settings = BenchSettings(
            device=Device(args.device),
            concurrency=args.concurrency,
            rounds=args.rounds,
            min_requests=args.min_requests,
            warmup_requests=args.warmup_requests,
            workload=workload,
            threads=args.threads,
            reference_scheduling=Scheduling(args.reference_scheduling),
            work_dir=args.work_dir,
            output_dir=args.output_dir,
            triton_url=args.triton_url,
            breakdown=args.breakdown,
            repository=args.repository,
        )
        if args.breakdown_only:
            if settings.device is not Device.CPU:
                raise BenchmarkError("the in-process breakdown runs in CPU mode only")
            breakdown = run_breakdown(settings, progress=say)
            print(format_breakdown(breakdown))
            settings.output_dir.mkdir(parents=True, exist_ok=True)
            path = settings.output_dir / "breakdown.json"
            path.write_text(json.dumps({"machine": machine_info(settings.device), "breakdown_s": breakdown}, indent=2))
            print(f"\nresults: {path}")
            return 0
        if args.prepare_only:
            model_dir = build_bench_model(
                settings.work_dir / "model", settings.architecture, seed=settings.seed, progress=say
            )
            print(export_repository(settings, model_dir, settings.work_dir / "repository", progress=say))
            return 0
        command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
        report = run_benchmark(settings, command=command, progress=say)
    except LoadtestError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print()
    print(format_table(report.comparisons))
    json_path, md_path = write_report(report, settings.output_dir)
    print(f"\nresults: {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
