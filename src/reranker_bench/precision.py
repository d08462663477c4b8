"""``reranker-bench precision``: the cpu profile's graphs side by side in one run.

FP32 as exported today, onnxruntime's fused FP32, and the export's INT8 (fused, dynamic INT8
weights), each run by the cpu model step's own scorer (``reranker_steps.onnx_scoring``:
length-sorted sub-batches) on one request of ``candidates`` pairs of about ``pair_tokens`` tokens
built by the tokenizer step; OpenVINO runs the FP32 graph (f32 precision hint) and the INT8
graph beside them, for the choice of runtime. Then, optionally, the same graphs end to end
through Triton (the ensemble, one request at a time; and throughput at several concurrencies).

The model is a random-weight XLM-R cross-encoder of the chosen architecture (``small``: 6 x 384;
``full``: bge-reranker-v2-m3's 24 x 1024, ~568M parameters), built, exported and quantized once
into ``--work`` and reused. Random weights make logits, not rankings, meaningful: agreement is
reported as the max |logit difference| against FP32; ranking agreement on trained models is
the export's gate (tests/test_int8.py).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reranker_common import Progress

from .errors import BenchmarkError
from .machine import machine_info
from .models import Architecture, build_bench_model

ARCHITECTURES = ("small", "full")
VARIANTS = ("fp32", "fused", "int8", "openvino-fp32", "openvino-int8")
SERVED_VARIANTS = ("fp32", "fused", "int8")
MAX_LENGTH = 512
BUCKETS = "64,128,256,512"


@dataclass(frozen=True, kw_only=True)
class PrecisionBenchSettings:
    work: Path
    architecture: str = "small"
    candidates: int = 50
    pair_tokens: int = 200
    rows_per_run: int = 8
    """Rows per onnxruntime run, length-sorted (the cpu profile's ``sub_batch_rows``)."""
    repeats: int = 3
    threads: int = 0
    """Intra-op threads; 0: one per core."""
    variants: tuple[str, ...] = VARIANTS
    end_to_end: bool = True
    step: bool = True
    """Measure the model step alone; off: end to end only (the full-size run splits the two)."""
    concurrency: tuple[int, ...] = ()
    """Throughput levels through Triton (requests in flight); empty: latency only."""
    requests_per_level: int = 16

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}")
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown or "fp32" not in self.variants:
            raise ValueError(f"variants must include fp32 and name only {', '.join(VARIANTS)}; unknown: {unknown}")
        if min(self.candidates, self.pair_tokens, self.repeats, self.requests_per_level) < 1:
            raise ValueError("candidates, pair tokens, repeats and requests per level must be positive")


@dataclass
class VariantResult:
    variant: str
    file_mib: float
    step_latency_s: list[float] = field(default_factory=list)
    max_abs_diff_vs_fp32: float | None = None
    end_to_end_latency_s: list[float] = field(default_factory=list)
    throughput_pairs_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def step_median_s(self) -> float | None:
        return statistics.median(self.step_latency_s) if self.step_latency_s else None


def cpu_flags() -> dict[str, bool]:
    """The instruction sets INT8 speed depends on (``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")}


# -- graphs ---------------------------------------------------------------------------------------


def _architecture(name: str) -> Architecture:
    return Architecture.cpu_bench() if name == "small" else Architecture.bge_reranker_v2_m3()


def prepare_graphs(settings: PrecisionBenchSettings, say: Progress) -> tuple[Path, dict[str, Path]]:
    """(model directory, {fp32|fused|int8: graph}), built into ``work`` once and reused."""
    from reranker_export import int8, onnx_export

    model_dir = build_bench_model(
        settings.work / f"model-{settings.architecture}", _architecture(settings.architecture), progress=say
    )
    graphs_dir = settings.work / f"graphs-{settings.architecture}"
    paths = {name: graphs_dir / name / "model.onnx" for name in SERVED_VARIANTS}
    config = json.loads((model_dir / "config.json").read_text())
    if not paths["fp32"].is_file():
        from transformers import AutoModelForSequenceClassification

        say("exporting the FP32 graph (the full-size architecture takes minutes and ~10 GiB)")
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype="float32").eval()
        onnx_export.export_onnx(model, paths["fp32"], input_names=("input_ids", "attention_mask"))
        del model
    if not paths["fused"].is_file():
        say("fusing (onnxruntime transformer optimizer)")
        fused = int8.fuse_graph(paths["fp32"], paths["fused"], config=config)
        say(f"fused operators: {fused}")
    if not paths["int8"].is_file():
        say("quantizing to INT8 (dynamic, weight MatMuls)")
        int8.quantize_int8(paths["fused"], paths["int8"])
    return model_dir, paths


def _mib(path: Path) -> float:
    sidecar = path.with_name(path.name + ".data")
    return (path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)) / 2**20


# -- the request --------------------------------------------------------------------------------


def build_request(model_dir: Path, settings: PrecisionBenchSettings) -> tuple[str, list[str], dict[str, np.ndarray]]:
    """One request of ``candidates`` passages, pairs cut to ``pair_tokens``; and the tokenizer step's feed."""
    from reranker_steps.pairs import DEFAULTS, PairEncoder
    from reranker_steps.params import StepParameters

    from .gpu_check_serving import sized_requests

    tokenizer_json = model_dir / "tokenizer.json"
    sized = sized_requests(
        tokenizer_json, settings.pair_tokens, count=1, candidates=settings.candidates, query_max_length=384
    )
    request = sized.requests[0]
    values = {
        "max_length": str(MAX_LENGTH),
        "length_buckets": BUCKETS,
        "max_documents": str(settings.candidates),
        "max_rows": str(settings.candidates),
    }
    encoder = PairEncoder.from_file(
        str(tokenizer_json), StepParameters({k: {"string_value": v} for k, v in values.items()}, DEFAULTS)
    )
    return request.query, list(request.documents), encoder.encode(request.query, request.documents)


# -- the model step alone -------------------------------------------------------------------------


def _onnxruntime_runner(path: Path, settings: PrecisionBenchSettings) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    from reranker_steps.onnx_scoring import OnnxScorer, session_options

    scorer = OnnxScorer(
        str(path),
        options=session_options(intra_op_threads=settings.threads),
        declared_inputs=["input_ids", "attention_mask"],
        pad_token_id=1,
        sub_batch_rows=settings.rows_per_run,
    )
    return scorer.score


def _openvino_runner(path: Path, settings: PrecisionBenchSettings) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import openvino as ov

    from reranker_steps.onnx_scoring import sub_batches

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if settings.threads:
        config["INFERENCE_NUM_THREADS"] = settings.threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def score(feed: dict[str, np.ndarray]) -> np.ndarray:
        lengths = feed["attention_mask"].sum(axis=1)
        logits = np.empty((len(lengths), 1), dtype=np.float32)
        for chunk in sub_batches(lengths, settings.rows_per_run):
            width = int(lengths[chunk].max())
            result = request.infer({name: array[chunk, :width] for name, array in feed.items()})
            logits[chunk] = np.asarray(result[0], dtype=np.float32).reshape(-1, 1)
        return logits

    return score


def _graph_of(variant: str, graphs: dict[str, Path]) -> Path:
    """OpenVINO runs onnxruntime's FP32 and INT8 graphs; the others are their own graph."""
    if variant.startswith("openvino"):
        return graphs["int8" if variant.endswith("int8") else "fp32"]
    return graphs[variant]


def measure_steps(
    graphs: dict[str, Path], feed: dict[str, np.ndarray], settings: PrecisionBenchSettings, progress: Progress
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Each variant's step latencies and logits, the variants interleaved in rounds.

    Every variant is loaded and warmed up first (first-run allocations and kernel selection are
    not the steady state); then each round times every variant once, starting one variant later
    each round, so a change in the machine's load during the run hits all of them instead of
    whichever ran last. Every graph stays loaded meanwhile: the full-size architecture needs
    about 5 GiB per onnxruntime graph (weights and their pre-packed copies).
    """
    runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {}
    logits: dict[str, np.ndarray] = {}
    for variant, path in graphs.items():
        progress(f"model step alone: loading and warming up {variant}")
        try:
            run = (_openvino_runner if variant.startswith("openvino") else _onnxruntime_runner)(path, settings)
            logits[variant] = run(feed).reshape(-1)
        except Exception as exc:  # OpenVINO may refuse a graph: reported, the others still run
            if not variant.startswith("openvino"):
                raise BenchmarkError(f"{variant}: {exc}") from exc
            progress(f"{variant} failed: {exc}")
            continue
        runners[variant] = run
    times: dict[str, list[float]] = {variant: [] for variant in runners}
    for round_number in range(1, settings.repeats + 1):
        order = _rotated(list(runners), round_number)
        for variant in order:
            started = time.perf_counter()
            try:
                runners[variant](feed)
            except Exception as exc:  # as at warm-up: a failing OpenVINO run is reported, not fatal
                if not variant.startswith("openvino"):
                    raise BenchmarkError(f"{variant}: {exc}") from exc
                progress(f"{variant} failed: {exc}")
                del runners[variant], times[variant], logits[variant]
                continue
            times[variant].append(time.perf_counter() - started)
        timings = ", ".join(f"{variant} {times[variant][-1]:.3f} s" for variant in order if variant in times)
        progress(f"  round {round_number}/{settings.repeats}: {timings}")  # in the order they ran
    return times, logits


def _rotated(variants: list[str], round_number: int) -> list[str]:
    """The variants in the order of one round: each round starts one variant later."""
    shift = (round_number - 1) % len(variants) if variants else 0
    return variants[shift:] + variants[:shift]


# -- end to end through Triton ----------------------------------------------------------------------


def _serve(model_dir: Path, graph: Path, repository: Path, settings: PrecisionBenchSettings) -> Any:
    from reranker_export.repository import ModelFiles, ModelSignature, render_repository
    from reranker_export.settings import Profile, ServingSettings, TokenizerSettings
    from reranker_serve import TritonServer

    serving = ServingSettings(
        profile=Profile.CPU,
        tokenizer=TokenizerSettings(
            max_length=MAX_LENGTH,
            length_buckets=tuple(int(b) for b in BUCKETS.split(",")),
            max_documents=max(settings.candidates, 64),
        ),
        max_batch_size=max(settings.candidates, 64) * 2,
        tokenizer_instances=1,
        ort_intra_op_threads=settings.threads,
        cpu_sub_batch_rows=settings.rows_per_run,
    )
    render_repository(
        repository,
        serving,
        signature=ModelSignature(),
        files=ModelFiles(onnx_path=graph, tokenizer_json=model_dir / "tokenizer.json"),
    )
    return TritonServer(repository, log_file=repository.parent / f"{repository.name}.log").start()


def _call(url: str, query: str, documents: list[str]) -> float:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inputs = [
            grpcclient.InferInput("query", [1], "BYTES"),
            grpcclient.InferInput("documents", [len(documents)], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(np.array([query.encode()], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([d.encode() for d in documents], dtype=np.object_))
        started = time.perf_counter()
        client.infer("reranker", inputs, client_timeout=600.0)
        return time.perf_counter() - started


def measure_end_to_end(
    results: list[VariantResult],
    model_dir: Path,
    graphs: dict[str, Path],
    request: tuple[str, list[str]],
    settings: PrecisionBenchSettings,
    progress: Progress,
) -> None:
    """End to end through Triton, one server per graph, all up at once and called in alternation.

    As with the step, each round calls every graph once, starting one graph later each round;
    each concurrency level runs every graph back to back, in the order of its round (a single
    pass: throughput figures are less protected from drift than the latency rounds). Three
    full-size servers hold every graph at once (their memory was not measured; the step alone,
    three graphs in one process, reached 15 GiB).
    """
    query, documents = request
    servers: dict[str, Any] = {}
    try:
        for result in results:
            progress(f"end to end through Triton: serving {result.variant}")
            repository = settings.work / "repos" / f"{settings.architecture}-{result.variant}"
            servers[result.variant] = _serve(model_dir, graphs[result.variant], repository, settings)
            _call(servers[result.variant].grpc_url, query, documents)  # warm-up
        for round_number in range(1, settings.repeats + 1):
            ordered = _rotated_results(results, round_number)
            for result in ordered:
                result.end_to_end_latency_s.append(_call(servers[result.variant].grpc_url, query, documents))
            timings = ", ".join(f"{r.variant} {r.end_to_end_latency_s[-1]:.3f} s" for r in ordered)
            progress(f"  round {round_number}/{settings.repeats}: {timings}")
        for level_number, level in enumerate(settings.concurrency, start=1):
            requests = max(level, settings.requests_per_level)
            for result in _rotated_results(results, level_number):
                url = servers[result.variant].grpc_url
                started = time.perf_counter()
                with ThreadPoolExecutor(level) as pool:  # ``level`` requests in flight until all are answered
                    list(pool.map(lambda _, url=url: _call(url, query, documents), range(requests)))
                pairs_per_s = requests * len(documents) / (time.perf_counter() - started)
                result.throughput_pairs_per_s[level] = pairs_per_s
                progress(f"  c={level}: {result.variant} {pairs_per_s:.1f} pairs/s")
    finally:
        for variant, server in servers.items():
            try:
                server.stop()
            except Exception as exc:  # the other servers must still be stopped
                progress(f"stopping the {variant} server failed: {exc}")


def _rotated_results(results: list[VariantResult], round_number: int) -> list[VariantResult]:
    by_variant = {r.variant: r for r in results}
    return [by_variant[v] for v in _rotated(list(by_variant), round_number)]


# -- the run ------------------------------------------------------------------------------------


def run_precision_bench(settings: PrecisionBenchSettings, progress: Progress) -> dict[str, Any]:
    settings.work.mkdir(parents=True, exist_ok=True)
    model_dir, graphs = prepare_graphs(settings, progress)
    query, documents, feed = build_request(model_dir, settings)
    tokens = feed["attention_mask"].sum(axis=1)
    progress(f"request: {len(documents)} pairs, {tokens.mean():.0f} tokens on average (max {tokens.max()})")
    results: dict[str, VariantResult] = {}
    variant_graphs = {variant: _graph_of(variant, graphs) for variant in settings.variants}
    for variant, graph in variant_graphs.items():
        results[variant] = VariantResult(variant=variant, file_mib=_mib(graph))
    if settings.step:
        times, logits = measure_steps(variant_graphs, feed, settings, progress)
        for variant in settings.variants:
            if variant not in times:
                del results[variant]
                continue
            result = results[variant]
            result.step_latency_s = times[variant]
            result.max_abs_diff_vs_fp32 = float(np.max(np.abs(logits[variant] - logits["fp32"])))
            progress(
                f"{variant}: median {result.step_median_s:.3f} s, "
                f"max |Δlogit| vs FP32 {result.max_abs_diff_vs_fp32:.3g}"
            )
    if settings.end_to_end:
        served = [results[variant] for variant in SERVED_VARIANTS if variant in results]
        measure_end_to_end(served, model_dir, graphs, (query, documents), settings, progress)
    base = results["fp32"]
    return {
        "machine": machine_info(),
        "cpu_flags": cpu_flags(),
        "settings": {**asdict(settings), "work": str(settings.work)},
        "request": {"pairs": len(documents), "mean_tokens": float(tokens.mean()), "max_tokens": int(tokens.max())},
        "results": [
            {
                **asdict(r),
                "step_median_s": r.step_median_s,
                "step_speedup_vs_fp32": base.step_median_s / r.step_median_s
                if base.step_median_s and r.step_median_s
                else None,
                "end_to_end_median_s": statistics.median(r.end_to_end_latency_s) if r.end_to_end_latency_s else None,
                "end_to_end_speedup_vs_fp32": (
                    statistics.median(base.end_to_end_latency_s) / statistics.median(r.end_to_end_latency_s)
                    if r.end_to_end_latency_s and base.end_to_end_latency_s
                    else None
                ),
            }
            for r in results.values()
        ],
    }


def format_precision_report(report: dict[str, Any]) -> str:
    machine = report["machine"]
    flags = ", ".join(name for name, present in report["cpu_flags"].items() if present) or "unknown"
    lines = [
        f"hardware: {machine['cpu']}, {machine['cores']} cores ({flags})",
        f"request: {report['request']['pairs']} pairs x {report['request']['mean_tokens']:.0f} tokens "
        f"(architecture {report['settings']['architecture']})",
        "",
        "| graph | file MiB | model step s (median) | × FP32 | max abs Δlogit | end to end s | × FP32 "
        "| pairs/s by concurrency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        e2e = f"{r['end_to_end_median_s']:.3f}" if r["end_to_end_median_s"] is not None else "-"
        e2e_x = f"{r['end_to_end_speedup_vs_fp32']:.2f}" if r["end_to_end_speedup_vs_fp32"] is not None else "-"
        levels = ", ".join(f"c={c}: {v:.0f}" for c, v in r["throughput_pairs_per_s"].items()) or "-"
        step = f"{r['step_median_s']:.3f}" if r["step_median_s"] is not None else "-"
        step_x = f"{r['step_speedup_vs_fp32']:.2f}" if r["step_speedup_vs_fp32"] is not None else "-"
        diff = f"{r['max_abs_diff_vs_fp32']:.3g}" if r["max_abs_diff_vs_fp32"] is not None else "-"
        lines.append(
            f"| {r['variant']} | {r['file_mib']:.0f} | {step} | {step_x} | {diff} | {e2e} | {e2e_x} | {levels} |"
        )
    return "\n".join(lines)


# -- the subcommand (reranker-bench precision) -------------------------------------------------------

SUMMARY = "cpu profile graphs side by side: FP32, fused FP32, INT8 (onnxruntime) and OpenVINO"


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default="small",
        help="small: 6 x 384 XLM-R; full: bge-reranker-v2-m3's 24 x 1024 (minutes; ~10 GiB to build, "
        "~5 GiB per graph to measure, all graphs loaded at once)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".bench/precision"),
        help="where the model and its graphs are built once and reused",
    )
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--pair-tokens", type=int, default=200, help="tokens per (query, passage) pair")
    parser.add_argument("--rows-per-run", type=int, default=8, help="length-sorted rows per onnxruntime run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: one per core")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, among " + ", ".join(VARIANTS))
    parser.add_argument("--no-end-to-end", action="store_true", help="the model step alone, no Triton")
    parser.add_argument("--no-step", action="store_true", help="end to end through Triton only")
    parser.add_argument("--concurrency", default="", help="comma-separated throughput levels through Triton, e.g. 1,8")
    parser.add_argument("--requests-per-level", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")


def configure(args: Any) -> PrecisionBenchSettings:
    return PrecisionBenchSettings(
        work=args.work,
        architecture=args.architecture,
        candidates=args.candidates,
        pair_tokens=args.pair_tokens,
        rows_per_run=args.rows_per_run,
        repeats=args.repeats,
        threads=args.threads,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        end_to_end=not args.no_end_to_end,
        step=not args.no_step,
        concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
        requests_per_level=args.requests_per_level,
    )


def run(settings: PrecisionBenchSettings, args: Any, command: str, progress: Progress) -> int:
    report = run_precision_bench(settings, progress)
    report["command"] = command
    print(format_precision_report(report), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0
