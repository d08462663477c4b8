"""The serving half of the GPU check: sized requests, the two pipelines it can measure, bounded levels.

- :func:`sized_requests`: 50-candidate requests whose pairs are at most (and close to) N tokens;
- :class:`InProcessScorer`: the in-process fallback pipeline, ``reranker_steps.pairs.PairEncoder``
  (the tokenizer step's own code) and the PyTorch model, on one device;
- :func:`prepare_triton_repository`: a ``cpu``-profile repository rendered by ``reranker_export``
  whose ``reranker_model`` step is swapped for :mod:`reranker_bench.torch_step_model`;
- :func:`run_level`: closed-loop workers bounded by a request count and by a time limit.

Imports nothing from ``reranker_bench.measure`` (which needs pydantic through the reference
stack): the GPU machine has only what the check itself needs.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reranker_loadtest.workload import Distribution, LengthDistribution, Workload, WorkloadSettings

if TYPE_CHECKING:
    from reranker_export.settings import ServingSettings
    from reranker_steps.pairs import PairEncoder

HF_MODEL_DIR = "hf_model"
"""Where the step's weights sit, in ``reranker_model``'s version directory."""
TORCH_STEP_MODULE = "torch_step_model.py"

ScoreCall = Callable[[str, Sequence[str]], Sequence[float]]
"""One pipeline's scoring call: (query, documents) -> one score per document, in input order."""


@dataclass(frozen=True)
class SizedRequest:
    query: str
    documents: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class SizedRequests:
    """Requests whose every (query, passage) pair has at most ``pair_tokens`` tokens, specials included."""

    pair_tokens: int
    requests: tuple[SizedRequest, ...]
    mean_pair_tokens: float
    """Tokens per pair as the tokenizer step counts them (before bucket padding)."""


def cut_to_tokens(tokenizer: Any, text: str, limit: int) -> str:
    """The longest prefix of ``text`` (cut at a token's end) that encodes to at most ``limit`` tokens."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    if len(encoding.ids) <= limit:
        return text
    offsets = encoding.offsets
    for keep in range(limit, 0, -1):
        prefix = text[: offsets[keep - 1][1]]
        # A word cut in the middle may split into more pieces than it had inside the whole word.
        if len(tokenizer.encode(prefix, add_special_tokens=False).ids) <= limit:
            return prefix
    return ""


def sized_requests(
    tokenizer_json: Path,
    pair_tokens: int,
    *,
    count: int,
    candidates: int,
    query_max_length: int,
    seed: int = 0,
) -> SizedRequests:
    """``count`` distinct requests of ``candidates`` passages, each pair cut to ``pair_tokens`` tokens.

    Text is the load-test workload's (12 languages, 10% of passages in another language than the
    query), with short queries (6-16 words) and passages long enough to fill any pair.
    """
    from tokenizers import Tokenizer

    from reranker_steps.pairs import PairTemplate

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    special = PairTemplate(tokenizer).num_special
    workload = Workload(
        WorkloadSettings(
            candidates=candidates,
            query_words=LengthDistribution(kind=Distribution.UNIFORM, low=6, high=16),
            document_words=LengthDistribution(kind=Distribution.UNIFORM, low=pair_tokens + 16, high=pair_tokens + 16),
            seed=seed + pair_tokens,
        )
    )
    requests, lengths = [], []
    for index in range(count):
        generated = workload.request(index)
        query = cut_to_tokens(tokenizer, generated.query, min(query_max_length, max(1, (pair_tokens - special) // 4)))
        query_tokens = len(tokenizer.encode(query, add_special_tokens=False).ids)
        budget = pair_tokens - special - query_tokens
        documents = tuple(cut_to_tokens(tokenizer, document, budget) for document in generated.documents)
        lengths += [
            special + query_tokens + n
            for n in (len(e.ids) for e in tokenizer.encode_batch(documents, add_special_tokens=False))
        ]
        requests.append(SizedRequest(query, documents))
    return SizedRequests(pair_tokens=pair_tokens, requests=tuple(requests), mean_pair_tokens=float(np.mean(lengths)))


def encoder_parameters(serving: ServingSettings, pad_token_id: int) -> dict[str, dict[str, str]]:
    """The tokenizer step's ``config.pbtxt`` parameters for ``serving``, as ``StepParameters`` reads them.

    The same values ``reranker_export.repository.tokenizer_config`` renders, built without
    tritonclient so the in-process fallback runs where tritonclient is missing.
    """
    tok = serving.tokenizer
    values = {
        "max_length": tok.max_length,
        "query_max_length": tok.effective_query_max_length,
        "overflow": tok.overflow.value,
        "window_stride": tok.window_stride,
        "length_buckets": ",".join(str(b) for b in tok.effective_length_buckets),
        "max_documents": tok.max_documents,
        "max_rows": serving.max_batch_size,
        "max_query_bytes": tok.max_query_bytes,
        "max_document_bytes": tok.max_document_bytes,
        "max_request_bytes": tok.max_request_bytes,
        "model_inputs": "input_ids,attention_mask",
        "pad_token_id": pad_token_id,
    }
    return {key: {"string_value": str(value)} for key, value in values.items()}


def pair_encoder(tokenizer_json: Path, serving: ServingSettings, pad_token_id: int) -> PairEncoder:
    """The tokenizer step's encoder, configured as the rendered repository configures it."""
    from reranker_steps.pairs import DEFAULTS, PairEncoder
    from reranker_steps.params import StepParameters

    return PairEncoder.from_file(
        str(tokenizer_json), StepParameters(encoder_parameters(serving, pad_token_id), DEFAULTS)
    )


class InProcessScorer:
    """The in-process pipeline: the tokenizer step's pair encoding, then the model on ``device``.

    Thread-safe: concurrent callers share the encoder (the tokenizers library is) and the model
    (PyTorch queues their kernels on the device).
    """

    def __init__(self, encoder: PairEncoder, model: Any, device: str) -> None:
        self.encoder = encoder
        self.model = model
        self.device = device

    def __call__(self, query: str, documents: Sequence[str]) -> list[float]:
        import torch

        tensors = self.encoder.encode(query, documents)
        with torch.inference_mode():
            feed = {name: torch.from_numpy(array).to(self.device) for name, array in tensors.items()}
            logits = self.model(**feed).logits
        return [float(x) for x in logits.float().cpu().numpy().reshape(-1)]


def libpython_link(folder: Path) -> Path | None:
    """A folder holding only a link to this interpreter's ``libpython``, for the python backend stub.

    The stub links ``libpython3.X.so.1.0`` and takes its ``sys.path`` from this interpreter; when the
    loader finds another build of that library first (a distribution's beside a pyenv or conda
    Python), C extensions such as ``_ssl`` fail on missing symbols. ``None`` for a static Python.
    """
    import sysconfig

    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not (Path(libdir) / soname).is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / soname
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(libdir) / soname)
    return folder


def torch_step_source() -> str:
    """The code of :mod:`reranker_bench.torch_step_model`, rendered as the step's ``model.py``."""
    return resources.files("reranker_bench").joinpath(TORCH_STEP_MODULE).read_text("utf-8")


def prepare_triton_repository(
    repo_dir: Path,
    *,
    serving: ServingSettings,
    tokenizer_json: Path,
    model: Any,
    device: str,
    dtype: str = "float16",
) -> Path:
    """Render ``serving`` (``cpu`` profile) and swap ``reranker_model`` for the PyTorch step.

    ``model`` (a transformers model, on any device) is saved in ``dtype`` beside the step.
    """
    import torch

    from reranker_export.repository import (
        CONFIG_FILENAME,
        TOKENIZER_FILENAME,
        VERSION,
        format_config,
        parse_config,
        render_repository,
    )
    from reranker_export.settings import CORE_MODEL_NAME, TOKENIZER_MODEL_NAME

    render_repository(repo_dir, serving)
    shutil.copyfile(tokenizer_json, repo_dir / TOKENIZER_MODEL_NAME / VERSION / TOKENIZER_FILENAME)
    step = repo_dir / CORE_MODEL_NAME
    config = parse_config((step / CONFIG_FILENAME).read_text("utf-8"))
    config.parameters.clear()
    pad = int(model.config.pad_token_id if model.config.pad_token_id is not None else 1)
    for key, value in {"model_dir": HF_MODEL_DIR, "device": device, "dtype": dtype, "pad_token_id": str(pad)}.items():
        config.parameters[key].string_value = value
    (step / CONFIG_FILENAME).write_text(format_config(config), encoding="utf-8")
    version = step / VERSION
    # reranker_steps/ stays beside it: the torch step's adapter imports the product's helpers.
    (version / "model.py").write_text(torch_step_source(), encoding="utf-8")
    target = getattr(torch, dtype)
    state = {name: tensor.detach().to("cpu", dtype=target) for name, tensor in model.state_dict().items()}
    model.save_pretrained(version / HF_MODEL_DIR, state_dict=state)
    return repo_dir


# -- bounded closed-loop levels ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LevelResult:
    pair_tokens: int
    mean_pair_tokens: float
    concurrency: int
    requests: int
    failures: int
    wall_s: float
    requests_per_s: float
    pairs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    bounded_by: str
    """``count``: every request of the level ran; ``time``: the level's time limit stopped it first."""
    first_error: str | None = None


def run_level(
    make_call: Callable[[], ScoreCall],
    sized: SizedRequests,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    start: int = 0,
) -> LevelResult:
    """``concurrency`` closed-loop workers send requests until ``max_requests`` or ``max_seconds``.

    No worker starts a request once the time limit has passed; those in flight finish. Latency
    percentiles cover every request, failed ones included; throughput counts successful ones.
    """
    counter = itertools.count()
    latencies: list[float] = []
    failures = 0
    first_error: str | None = None
    lock = threading.Lock()
    pool = sized.requests
    started = time.perf_counter()
    deadline = started + max_seconds

    def worker() -> None:
        nonlocal failures, first_error
        call = make_call()
        while time.perf_counter() < deadline and (i := next(counter)) < max_requests:
            request = pool[(start + i) % len(pool)]
            began = time.perf_counter()
            error: str | None = None
            try:
                scores = call(request.query, request.documents)
                if len(scores) != len(request.documents):
                    error = f"{len(scores)} scores for {len(request.documents)} documents"
            except Exception as exc:  # any failure of the pipeline under test is a failed request
                error = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - began
            with lock:
                latencies.append(elapsed)
                if error is not None:
                    failures += 1
                    first_error = first_error or error[:300]

    threads = [threading.Thread(target=worker, name=f"gpu-check-{n}") for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99)) if len(ms) else (0.0, 0.0, 0.0)
    ok = len(ms) - failures
    candidates = len(pool[0].documents)
    return LevelResult(
        pair_tokens=sized.pair_tokens,
        mean_pair_tokens=sized.mean_pair_tokens,
        concurrency=concurrency,
        requests=len(ms),
        failures=failures,
        wall_s=wall,
        requests_per_s=ok / wall if wall > 0 else 0.0,
        pairs_per_s=ok * candidates / wall if wall > 0 else 0.0,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        bounded_by="count" if len(ms) >= max_requests else "time",
        first_error=first_error,
    )


@dataclass(frozen=True, kw_only=True)
class MeasurePlan:
    """What the measurement runs: every length at c=1 (latency), then at each saturation level."""

    lengths: tuple[int, ...]
    concurrency: tuple[int, ...]
    """Saturation levels (throughput), after c=1."""
    latency_requests: int
    """Requests at c=1, at most."""
    saturation_requests: int
    """Requests per saturation level, at most."""
    level_seconds: float
    """Wall time per level, at most (in-flight requests finish)."""
    warmup_requests: int
    """Per length, unmeasured: this many at c=1, then one request per worker at the top level."""
    budget_s: float
    """Wall time of the whole measurement, warm-ups included; levels past it are skipped."""

    def levels(self) -> list[tuple[int, int]]:
        return [(length, c) for length in self.lengths for c in (1, *self.concurrency)]


def measure_pipeline(
    make_call: Callable[[], ScoreCall],
    request_sets: dict[int, SizedRequests],
    plan: MeasurePlan,
    progress: Callable[[str], None],
) -> tuple[list[LevelResult], list[str]]:
    """Run ``plan``'s levels against one pipeline: (results, the levels skipped for lack of time)."""
    deadline = time.perf_counter() + plan.budget_s
    levels = plan.levels()
    results: list[LevelResult] = []
    skipped: list[str] = []
    top = max(plan.concurrency, default=1)
    for n, (length, concurrency) in enumerate(levels):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            skipped.append(f"{length} tokens c={concurrency}")
            continue
        sized = request_sets[length]
        if concurrency == 1 and plan.warmup_requests:
            progress(f"  warm-up at {length} tokens per pair")
            run_level(make_call, sized, concurrency=1, max_requests=plan.warmup_requests, max_seconds=remaining)
            if top > 1:
                run_level(make_call, sized, concurrency=top, max_requests=top, max_seconds=remaining)
            remaining = deadline - time.perf_counter()
        seconds = max(min(plan.level_seconds, remaining / (len(levels) - n)), 0.0)
        limit = plan.latency_requests if concurrency == 1 else plan.saturation_requests
        result = run_level(make_call, sized, concurrency=concurrency, max_requests=limit, max_seconds=seconds)
        progress(
            f"  {length} tokens c={concurrency}: {result.requests} requests ({result.bounded_by}-bound), "
            f"p50 {result.p50_ms:.1f} / p95 {result.p95_ms:.1f} ms, {result.requests_per_s:.1f} req/s, "
            f"{result.pairs_per_s:.0f} pairs/s, {result.failures} failures"
        )
        results.append(result)
    return results, skipped
