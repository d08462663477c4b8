"""``reranker-bench serving``: where the milliseconds of one rerank request go, against a naive in-process run.

It exports the tiny test XLM-R cross-encoder (:mod:`reranker_export.testmodels`) into a
``cpu``-profile repository (max_length 512), starts a local Triton on it and sends one request
at a time (closed loop, one client): 50 candidates of ~200 tokens each. Every request is timed
by the client, and Triton's per-model statistics are read before and after it, so each request
is split into

- ``reranker_tokenizer``: queue + compute (python backend: pair encoding, bucket padding);
- ``reranker_model``: queue (dynamic batching delay) + compute (onnxruntime via the python backend);
- the rest: ensemble scheduling, tensor hand-over between steps, gRPC and (de)serialization.

In the same run, alternating request by request with the server, the naive reference scores the
same 50 pairs in-process: the Hugging Face tokenizer (``padding=True``) and one onnxruntime
session on the same ``model.onnx`` with the same session options, no Triton. The report gives
p50/p95 of every part, the ratio served/naive, the machine and the command.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker_client.config import ENSEMBLE_NAME, TOKENIZER_MODEL_NAME
from reranker_common import Progress
from reranker_export.settings import CORE_MODEL_NAME

from .errors import BenchmarkError
from .machine import load_average, machine_info
from .models import export_repository, prepare_test_model
from .serving_systems import STAT_KINDS, NaiveReference, Request, Stats, TritonCaller

if TYPE_CHECKING:
    from reranker_export.settings import ServingSettings


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


def serving_settings(settings: ServingBenchSettings) -> ServingSettings:
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


def _sub(after: Stats, before: Stats, model: str, key: str) -> float:
    return (after[model][key] - before[model][key]) * 1e-9


def run_serving_benchmark(
    settings: ServingBenchSettings, *, command: str, progress: Progress = print
) -> ServingBenchReport:
    """Export, serve, and time ``settings.requests`` requests through Triton and the naive reference."""
    from tokenizers import Tokenizer

    from reranker_export.repository import ONNX_FILENAME, TOKENIZER_FILENAME, VERSION
    from reranker_serve import ServeError, TritonServer

    with contextlib.ExitStack() as stack:
        if settings.work_dir is not None:
            work = settings.work_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serving-")))
        model_dir = prepare_test_model(settings.model_dir, work, progress)
        serving = serving_settings(settings)
        repo = export_repository(model_dir, work / "repository", serving, progress=progress)
        tokenizer_json = repo / TOKENIZER_MODEL_NAME / VERSION / TOKENIZER_FILENAME
        requests = build_requests(tokenizer_json, settings)
        naive = NaiveReference(model_dir, repo / CORE_MODEL_NAME / VERSION / ONNX_FILENAME, settings.max_length)

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
            tok_queue = _sub(after, before, TOKENIZER_MODEL_NAME, "queue")
            tok_compute = sum(_sub(after, before, TOKENIZER_MODEL_NAME, k) for k in STAT_KINDS[1:])
            model_queue = _sub(after, before, CORE_MODEL_NAME, "queue")
            model_compute = sum(_sub(after, before, CORE_MODEL_NAME, k) for k in STAT_KINDS[1:])
            server_side = _sub(after, before, ENSEMBLE_NAME, "success")
            executions += after[CORE_MODEL_NAME]["executions"] - before[CORE_MODEL_NAME]["executions"]
            samples.add("served_total", served)
            samples.add("tokenizer_queue", tok_queue)
            samples.add("tokenizer_compute", tok_compute)
            samples.add("model_queue", model_queue)
            samples.add("model_compute", model_compute)
            samples.add("model_compute_infer", _sub(after, before, CORE_MODEL_NAME, "compute_infer"))
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
