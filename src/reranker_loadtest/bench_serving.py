"""Serving overhead of one rerank request: where the milliseconds go, against a naive in-process run.

``python -m reranker_loadtest.bench_serving`` exports the tiny test XLM-R cross-encoder
(:mod:`reranker_export.testmodels`) into a ``cpu``-profile repository (max_length 512),
starts a local Triton on it and sends one request at a time (closed loop, one client):
50 candidates of ~200 tokens each. Every request is timed by the client, and Triton's
per-model statistics are read before and after it, so each request is split into

- ``reranker_tokenizer``: queue + compute (python backend: pair encoding, bucket padding);
- ``reranker_model``: queue (dynamic batching delay) + compute (onnxruntime via the python backend);
- the rest: ensemble scheduling, tensor hand-over between steps, gRPC and (de)serialization.

In the same run, alternating request by request with the server, the naive reference scores the
same 50 pairs in-process: the Hugging Face tokenizer (``padding=True``) and one onnxruntime
session on the same ``model.onnx`` with the same session options, no Triton. The report gives
p50/p95 of every part, the ratio served/naive, the machine and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchmarkError, LoadtestError

PROG = "python -m reranker_loadtest.bench_serving"
Progress = Callable[[str], None]

ENSEMBLE = "reranker"
TOKENIZER_STEP = "reranker_tokenizer"
MODEL_STEP = "reranker_model"
STAT_KINDS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True, kw_only=True)
class ServingBenchSettings:
    requests: int = 300
    warmup: int = 30
    documents: int = 50
    document_tokens: int = 200
    """Passage tokens per candidate (the pair adds the query and the special tokens)."""
    max_length: int = 512
    max_queue_delay_us: int | None = None
    """``reranker_model`` dynamic-batching delay; ``None`` keeps the project default."""
    tokenizer_instances: int | None = None
    """``reranker_tokenizer`` instances; ``None`` keeps the project default."""
    length_buckets: tuple[int, ...] | None = None
    """Padding buckets of the tokenizer step; ``None`` keeps the project default."""
    model_dir: Path | None = None
    """An existing cross-encoder directory; ``None`` builds the tiny XLM-R test model."""
    work_dir: Path | None = None
    """Where the model and the repository go; ``None`` uses a temporary directory."""

    def __post_init__(self) -> None:
        for name in ("requests", "documents", "document_tokens", "max_length"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchmarkError(f"warmup must be >= 0, got {self.warmup}")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise BenchmarkError(f"max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if self.tokenizer_instances is not None and self.tokenizer_instances < 1:
            raise BenchmarkError(f"tokenizer-instances must be positive, got {self.tokenizer_instances}")


# -- machine ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model and core counts from ``lscpu`` (``/proc/cpuinfo`` as fallback), load, versions."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    lscpu: dict[str, str] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    info["cpu"] = lscpu.get("Model name") or platform.processor() or "unknown"
    info["cpus"] = int(lscpu.get("CPU(s)", 0) or os.cpu_count() or 0)
    with contextlib.suppress(ValueError):
        info["cores_per_socket"] = int(lscpu.get("Core(s) per socket", ""))
        info["threads_per_core"] = int(lscpu.get("Thread(s) per core", ""))
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("onnxruntime", "tokenizers", "transformers", "tritonclient", "nvidia-pytriton", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    info["versions"] = versions
    return info


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# -- model, repository and workload ------------------------------------------------------------


def prepare_model(settings: ServingBenchSettings, work: Path, say: Progress) -> Path:
    if settings.model_dir is not None:
        if not (settings.model_dir / "config.json").is_file():
            raise BenchmarkError(f"{settings.model_dir} is not a model directory (no config.json)")
        return settings.model_dir
    from reranker_export.testmodels import TestModelKind, build_test_model

    model_dir = work / "model"
    if (model_dir / "config.json").is_file():
        say(f"reusing the test model in {model_dir}")
        return model_dir
    say("building the tiny XLM-R test model (a minute or two on a small machine)")
    return build_test_model(model_dir, kind=TestModelKind.XLM_ROBERTA, progress=say)


def serving_settings(settings: ServingBenchSettings) -> Any:
    """The project's default ``cpu`` serving settings, at ``max_length`` and with the overrides asked for."""
    from reranker_export.settings import Profile, ServingSettings, TokenizerSettings

    overrides: dict[str, Any] = {}
    tokenizer_overrides: dict[str, Any] = {}
    if settings.length_buckets:
        tokenizer_overrides["length_buckets"] = settings.length_buckets
    if settings.max_queue_delay_us is not None:
        overrides["max_queue_delay_us"] = settings.max_queue_delay_us
    if settings.tokenizer_instances is not None:
        overrides["tokenizer_instances"] = settings.tokenizer_instances
    return ServingSettings(
        profile=Profile.CPU,
        tokenizer=TokenizerSettings(
            max_length=settings.max_length,
            max_documents=max(64, settings.documents),
            **tokenizer_overrides,
        ),
        max_batch_size=max(128, settings.documents),
        **overrides,
    )


def export_repository(serving: Any, model_dir: Path, repo: Path, say: Progress) -> Path:
    from reranker_export.errors import ExportError
    from reranker_export.pipeline import ExportSettings, export_model

    try:
        export_model(ExportSettings(model=str(model_dir), output=repo, serving=serving, force=True), progress=say)
    except ExportError as exc:
        raise BenchmarkError(f"export failed: {exc}") from exc
    return repo


@dataclass(frozen=True)
class Request:
    query: str
    documents: tuple[str, ...]


def build_requests(tokenizer_json: Path, settings: ServingBenchSettings) -> list[Request]:
    """Distinct requests of ``documents`` passages, each cut to exactly ``document_tokens`` tokens.

    The text is the test corpus (six languages) the tiny model's tokenizer was trained on, so
    tokens per word are those of real text for that vocabulary, not of unknown characters.
    """
    from tokenizers import Tokenizer

    from reranker_export.testmodels import corpus, long_document

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    words = long_document(20_000).split()
    pool: list[str] = []
    position = 0
    while len(pool) < settings.documents * 4:
        # Grow a word span until it reaches the token count, then cut at that token.
        span = 40
        while True:
            text = " ".join(words[position : position + span])
            encoding = tokenizer.encode(text, add_special_tokens=False)
            if len(encoding.ids) >= settings.document_tokens or position + span >= len(words):
                break
            span += 20
        end = encoding.offsets[min(settings.document_tokens, len(encoding.ids)) - 1][1]
        pool.append(text[:end])
        position = (position + span) % (len(words) - 200)
    queries = [e.text for e in corpus() if e.kind == "query" and e.split == "test"]
    total = settings.warmup + settings.requests
    return [
        Request(
            query=queries[i % len(queries)],
            documents=tuple(pool[(i * 7 + k) % len(pool)] for k in range(settings.documents)),
        )
        for i in range(total)
    ]


# -- the two systems ---------------------------------------------------------------------------


def _stats_ns(client: Any) -> dict[str, dict[str, int]]:
    """Cumulative ns per model and kind (plus ``requests``) from Triton's statistics."""
    result: dict[str, dict[str, int]] = {}
    for stats in client.get_inference_statistics(as_json=True)["model_stats"]:
        inference = stats.get("inference_stats", {})
        entry = {kind: int(inference.get(kind, {}).get("ns", 0)) for kind in STAT_KINDS}
        entry["success"] = int(inference.get("success", {}).get("ns", 0))
        entry["requests"] = int(inference.get("success", {}).get("count", 0))
        entry["executions"] = int(stats.get("execution_count", 0))
        result[stats["name"]] = entry
    return result


class TritonCaller:
    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def __call__(self, request: Request) -> tuple[np.ndarray, float]:
        g = self._grpc
        query = np.array([request.query.encode()], dtype=np.object_)
        documents = np.array([d.encode() for d in request.documents], dtype=np.object_)
        inputs = [g.InferInput("query", [1], "BYTES"), g.InferInput("documents", [len(documents)], "BYTES")]
        inputs[0].set_data_from_numpy(query)
        inputs[1].set_data_from_numpy(documents)
        outputs = [g.InferRequestedOutput("scores")]
        started = time.perf_counter()
        result = self.client.infer(ENSEMBLE, inputs, outputs=outputs, client_timeout=60)
        scores = result.as_numpy("scores")
        elapsed = time.perf_counter() - started
        return np.asarray(scores), elapsed

    def stats(self) -> dict[str, dict[str, int]]:
        return _stats_ns(self.client)

    def stats_after(self, requests: int, timeout_s: float = 10.0) -> dict[str, dict[str, int]]:
        """Statistics once every step has recorded ``requests`` requests in all.

        Triton records a model's statistics after its reply is sent, so a read right after the
        reply can miss the last request; poll until each step has counted every request sent.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            counts = {stats[m]["requests"] for m in (ENSEMBLE, TOKENIZER_STEP, MODEL_STEP)}
            if counts == {requests}:
                return stats
            if max(counts) > requests:
                raise BenchmarkError("another client is using the benchmark's Triton server")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"Triton's statistics did not record the request within {timeout_s:g} s")

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class NaiveTiming:
    scores: np.ndarray
    tokenizer_s: float
    onnxruntime_s: float
    feed: dict[str, np.ndarray]
    """The onnxruntime inputs, padded to the longest pair."""


class NaiveReference:
    """The same pairs, in-process: HF tokenizer + one onnxruntime session, FlagReranker semantics."""

    def __init__(self, model_dir: Path, onnx_path: Path, max_length: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.max_length = max_length
        # The session options of the served model (reranker_export/triton_models/reranker_model/model.py),
        # so the comparison isolates serving overhead rather than onnxruntime tuning.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, request: Request) -> NaiveTiming:
        started = time.perf_counter()
        # Queries here are short, so query truncation (FlagReranker's query_max_length) never bites.
        encoded = self.tokenizer(
            [request.query] * len(request.documents),
            list(request.documents),
            truncation="only_second",
            max_length=self.max_length,
            padding=True,
            return_tensors="np",
        )
        feed = {name: encoded[name].astype(np.int64) for name in self.input_names}
        tokenized = time.perf_counter()
        (logits,) = self.session.run(None, feed)
        done = time.perf_counter()
        return NaiveTiming(
            scores=np.asarray(logits).reshape(-1),
            tokenizer_s=tokenized - started,
            onnxruntime_s=done - tokenized,
            feed=feed,
        )

    def time_padded(self, feed: dict[str, np.ndarray], width: int) -> float:
        """Seconds of one onnxruntime run on ``feed`` padded to ``width`` (the served batch's shape)."""
        extra = width - feed["input_ids"].shape[1]
        pad = {"input_ids": int(self.tokenizer.pad_token_id)}
        wide = {name: np.pad(a, ((0, 0), (0, extra)), constant_values=pad.get(name, 0)) for name, a in feed.items()}
        started = time.perf_counter()
        self.session.run(None, wide)
        return time.perf_counter() - started


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Samples:
    """Seconds per measured request, per named part."""

    parts: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.parts.setdefault(name, []).append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "p50_ms": float(np.percentile(values, 50) * 1e3),
                "p95_ms": float(np.percentile(values, 95) * 1e3),
                "mean_ms": float(np.mean(values) * 1e3),
            }
            for name, values in self.parts.items()
        }


# Parts in report order: (key, description).
PARTS = (
    ("served_total", "Triton end to end (client-observed)"),
    ("tokenizer_queue", "  reranker_tokenizer queue"),
    ("tokenizer_compute", "  reranker_tokenizer compute (input + infer + output)"),
    ("model_queue", "  reranker_model queue (dynamic-batching delay)"),
    ("model_compute", "  reranker_model compute (input + infer + output)"),
    ("model_compute_infer", "    of which compute_infer (python backend: onnxruntime run + IPC)"),
    ("ensemble_overhead", "  ensemble: server time not in the two steps"),
    ("grpc_overhead", "  gRPC + client: client time - server time"),
    ("served_minus_model", "  everything but reranker_model compute"),
    ("naive_total", "Naive in-process: HF tokenizer + onnxruntime"),
    ("naive_tokenizer", "  HF tokenizer (padding to the longest pair)"),
    ("naive_onnxruntime", "  onnxruntime session.run (padded to the longest pair)"),
    ("onnxruntime_bucket", "In-process onnxruntime on the served shape (padded to the bucket)"),
    ("rust_tokenize", "In-process tokenizers.encode_batch_fast (the tokenizer step's call)"),
)


@dataclass(frozen=True, kw_only=True)
class ServingBenchReport:
    command: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    pair_tokens: dict[str, float]
    bucket: int
    parity_max_abs_diff: float
    executions_per_request: float
    parts: dict[str, dict[str, float]]

    @property
    def ratio_p50(self) -> float:
        return self.parts["served_total"]["p50_ms"] / self.parts["naive_total"]["p50_ms"]

    @property
    def ratio_p95(self) -> float:
        return self.parts["served_total"]["p95_ms"] / self.parts["naive_total"]["p95_ms"]

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "settings": self.settings,
            "machine": self.machine,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "pair_tokens": self.pair_tokens,
            "bucket": self.bucket,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "executions_per_request": self.executions_per_request,
            "parts_ms": self.parts,
            "ratio_served_over_naive": {"p50": self.ratio_p50, "p95": self.ratio_p95},
        }


def format_report(report: ServingBenchReport) -> str:
    m = report.machine
    lines = [
        f"machine: {m['cpu']}, {m['cpus']} CPUs; load average before {report.load_before[0]:.2f}, "
        f"after {report.load_after[0]:.2f}",
        f"request: {report.settings['documents']} candidates, pair tokens p50 {report.pair_tokens['p50']:.0f} "
        f"(min {report.pair_tokens['min']:.0f}, max {report.pair_tokens['max']:.0f}), padded to bucket "
        f"{report.bucket}; {report.settings['requests']} measured requests after "
        f"{report.settings['warmup']} warm-up",
        "",
        f"{'part':<72} {'p50 ms':>8} {'p95 ms':>8}",
    ]
    for key, label in PARTS:
        if key in report.parts:
            part = report.parts[key]
            lines.append(f"{label:<72} {part['p50_ms']:8.2f} {part['p95_ms']:8.2f}")
    lines += [
        "",
        f"served / naive: p50 x{report.ratio_p50:.2f}, p95 x{report.ratio_p95:.2f}; "
        f"max |score difference| {report.parity_max_abs_diff:.1e}; "
        f"reranker_model executions per request {report.executions_per_request:.2f}",
    ]
    return "\n".join(lines)


def _sub(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], model: str, key: str) -> float:
    return (after[model][key] - before[model][key]) * 1e-9


def run_benchmark(settings: ServingBenchSettings, *, command: str, progress: Progress = print) -> ServingBenchReport:
    from reranker_serve import ServeError, TritonServer

    with contextlib.ExitStack() as stack:
        if settings.work_dir is not None:
            work = settings.work_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serving-")))
        model_dir = prepare_model(settings, work, progress)
        serving = serving_settings(settings)
        repo = export_repository(serving, model_dir, work / "repository", progress)
        tokenizer_json = repo / TOKENIZER_STEP / "1" / "tokenizer.json"
        requests = build_requests(tokenizer_json, settings)
        naive = NaiveReference(model_dir, repo / MODEL_STEP / "1" / "model.onnx", settings.max_length)

        from tokenizers import Tokenizer

        rust = Tokenizer.from_file(str(tokenizer_json))
        rust.no_truncation()
        rust.no_padding()
        encode_fast = getattr(rust, "encode_batch_fast", rust.encode_batch)
        pair_lengths = [
            len(ids)
            for r in requests[: min(len(requests), 20)]
            for ids in naive.tokenizer(
                [r.query] * len(r.documents),
                list(r.documents),
                truncation="only_second",
                max_length=settings.max_length,
            )["input_ids"]
        ]
        progress(f"starting Triton on {repo}")
        try:
            server = stack.enter_context(TritonServer(repo, log_file=work / "triton.log"))
        except ServeError as exc:
            raise BenchmarkError(f"Triton did not start: {exc}") from exc
        caller = TritonCaller(server.grpc_url)
        stack.callback(caller.close)

        first_scores, _ = caller(requests[0])
        parity = float(np.max(np.abs(first_scores.astype(np.float64) - naive(requests[0]).scores)))
        if not parity <= 1e-3:
            raise BenchmarkError(f"Triton and the naive reference disagree: max |score difference| {parity:.3g}")

        progress(f"warm-up: {settings.warmup} requests per system")
        for request in requests[: settings.warmup]:
            caller(request)
            naive(request)
            encode_fast([request.query, *request.documents], add_special_tokens=False)

        sent = 1 + settings.warmup
        load_before = load_average()
        progress(f"measuring {settings.requests} requests per system, alternating request by request")
        samples = Samples()
        executions = 0
        widths = []
        buckets = serving.tokenizer.effective_length_buckets
        after = caller.stats_after(sent)
        for i, request in enumerate(requests[settings.warmup :], start=1):
            before = after
            _, served = caller(request)
            sent += 1
            after = caller.stats_after(sent)
            tok_queue = _sub(after, before, TOKENIZER_STEP, "queue")
            tok_compute = sum(_sub(after, before, TOKENIZER_STEP, k) for k in STAT_KINDS[1:])
            model_queue = _sub(after, before, MODEL_STEP, "queue")
            model_compute = sum(_sub(after, before, MODEL_STEP, k) for k in STAT_KINDS[1:])
            server_side = _sub(after, before, ENSEMBLE, "success")
            executions += after[MODEL_STEP]["executions"] - before[MODEL_STEP]["executions"]
            samples.add("served_total", served)
            samples.add("tokenizer_queue", tok_queue)
            samples.add("tokenizer_compute", tok_compute)
            samples.add("model_queue", model_queue)
            samples.add("model_compute", model_compute)
            samples.add("model_compute_infer", _sub(after, before, MODEL_STEP, "compute_infer"))
            samples.add("ensemble_overhead", server_side - tok_queue - tok_compute - model_queue - model_compute)
            samples.add("grpc_overhead", served - server_side)
            samples.add("served_minus_model", served - model_compute)

            # The served batch is padded to the bucket of its longest pair; time onnxruntime on that too.
            timing = naive(request)
            width = timing.feed["input_ids"].shape[1]
            widths.append(next(b for b in buckets if b >= width))
            padded = naive.time_padded(timing.feed, widths[-1])
            samples.add("naive_total", timing.tokenizer_s + timing.onnxruntime_s)
            samples.add("naive_tokenizer", timing.tokenizer_s)
            samples.add("naive_onnxruntime", timing.onnxruntime_s)
            samples.add("onnxruntime_bucket", padded)

            started = time.perf_counter()
            encode_fast([request.query, *request.documents], add_special_tokens=False)
            samples.add("rust_tokenize", time.perf_counter() - started)
            if i % 50 == 0:
                progress(f"  {i}/{settings.requests}")
        load_after = load_average()

    lengths = np.asarray(pair_lengths)
    buckets = serving.tokenizer.effective_length_buckets
    return ServingBenchReport(
        command=command,
        settings={
            "requests": settings.requests,
            "warmup": settings.warmup,
            "documents": settings.documents,
            "document_tokens": settings.document_tokens,
            "max_length": settings.max_length,
            "max_queue_delay_us": serving.max_queue_delay_us,
            "tokenizer_instances": serving.tokenizer_instances,
            "model_instances": serving.model_instances,
            "length_buckets": list(buckets),
            "model": str(settings.model_dir) if settings.model_dir else "tiny XLM-R test model (built)",
        },
        machine=machine_info(),
        load_before=load_before,
        load_after=load_after,
        pair_tokens={"min": float(lengths.min()), "p50": float(np.median(lengths)), "max": float(lengths.max())},
        bucket=max(set(widths), key=widths.count),
        parity_max_abs_diff=parity,
        executions_per_request=executions / settings.requests,
        parts=samples.summary(),
    )


# -- CLI ---------------------------------------------------------------------------------------


def _buckets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Latency of one rerank request through the cpu-profile Triton ensemble, split into "
            "tokenizer, model and ensemble/gRPC time, against the same pairs scored in-process "
            "(HF tokenizer + onnxruntime) in the same run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = ServingBenchSettings()
    parser.add_argument("--requests", type=int, default=defaults.requests, help="measured requests per system")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="warm-up requests per system")
    parser.add_argument("--documents", type=int, default=defaults.documents, help="candidates per request")
    parser.add_argument(
        "--document-tokens", type=int, default=defaults.document_tokens, help="passage tokens per candidate"
    )
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per pair")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="reranker_model dynamic-batching delay; None: the project default",
    )
    parser.add_argument(
        "--tokenizer-instances", type=int, default=None, help="reranker_tokenizer instances; None: the project default"
    )
    parser.add_argument(
        "--length-buckets",
        type=_buckets,
        default=None,
        help="comma-separated padding lengths of the tokenizer step; None: the project default",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="cross-encoder directory; None: build the tiny XLM-R test model"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the model, repository and server log here")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        settings = ServingBenchSettings(
            requests=args.requests,
            warmup=args.warmup,
            documents=args.documents,
            document_tokens=args.document_tokens,
            max_length=args.max_length,
            max_queue_delay_us=args.max_queue_delay_us,
            tokenizer_instances=args.tokenizer_instances,
            length_buckets=args.length_buckets,
            model_dir=args.model,
            work_dir=args.work_dir,
        )
        command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
        report = run_benchmark(settings, command=command, progress=say)
    except (LoadtestError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
