"""Every benchmark's report as text: the comparison (terminal table, markdown, JSON files),
the in-process breakdown, the serving breakdown and the client-side cost tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .breakdown import TOKENS_PER_REQUEST, Breakdown
from .client_cost import TARGET_US, InFlight, Timing
from .compare import BenchReport
from .measure import Comparison, LevelResult
from .serving import ServingBenchReport

# -- the comparison (reranker-bench compare) ---------------------------------------------------


def format_table(comparisons: Sequence[Comparison]) -> str:
    header = (
        "c",
        "system",
        "pairs/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "fail",
        "CPU s/req",
        "thr (a)/(b)",
        "p95 (a)/(b)",
        "CPU (b)/(a)",
    )
    rows = [header]
    for c in comparisons:
        for label, r in (("(a) triton", c.triton), ("(b) reference", c.reference)):
            ratios = (
                (f"{c.throughput_ratio:.2f}x", f"{c.latency_ratio('p95_ms'):.2f}", f"{c.cpu_ratio:.2f}x")
                if r is c.triton
                else ("", "", "")
            )
            rows.append(
                (
                    str(c.concurrency),
                    label,
                    f"{r.pairs_per_s:.1f}",
                    f"{r.p50_ms:.0f}",
                    f"{r.p95_ms:.0f}",
                    f"{r.p99_ms:.0f}",
                    f"{r.failures}/{r.requests}",
                    _cpu_cell(r),
                    *ratios,
                )
            )
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
                ratios = (
                    f"**{c.throughput_ratio:.2f}x**",
                    f"{c.latency_ratio('p50_ms'):.2f}",
                    f"{c.latency_ratio('p95_ms'):.2f}",
                    f"{c.latency_ratio('p99_ms'):.2f}",
                    f"{c.cpu_ratio:.2f}x",
                )
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


def format_breakdown(breakdown: Breakdown) -> str:
    """The in-process parts as a markdown table (median per request)."""
    lines = ["| part (in-process, one request at a time) | wall s | CPU s |", "|---|---:|---:|"]
    for name, value in breakdown.items():
        if name == TOKENS_PER_REQUEST:
            continue
        lines.append(f"| {name} | {value['wall_s']:.2f} | {value['cpu_s']:.2f} |")
    tokens = breakdown.get(TOKENS_PER_REQUEST, {})
    if tokens:
        lines += [
            "",
            f"Tokens per request: {tokens.get('real', 0):.0f} real, {tokens.get('padded', 0):.0f} "
            "after padding to the longest pair.",
        ]
    return "\n".join(lines)


def write_report(report: BenchReport, output_dir: Path) -> tuple[Path, Path]:
    """``bench.json`` and ``bench.md`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "bench.json"
    md_path = output_dir / "bench.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(format_markdown(report), encoding="utf-8")
    return json_path, md_path


# -- the serving breakdown (reranker-bench serving) --------------------------------------------

# Parts in report order: (key, description).
SERVING_PARTS = (
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


def format_serving_report(report: ServingBenchReport) -> str:
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
    for key, label in SERVING_PARTS:
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


# -- the client's cost (reranker-bench client) -------------------------------------------------


def format_client_cost(timings: dict[str, Timing], *, top_n: int, documents: int) -> str:
    """The per-step table, the total against :data:`TARGET_US`, and partial selection against a full sort."""
    lines = ["| step | CPU µs/call | wall µs/call |", "|---|---|---|"]
    lines += [f"| {t.name} | {t.cpu_us:.1f} | {t.wall_us:.1f} |" for t in timings.values()]
    lines.append(f"total CPU / target ({TARGET_US:.0f} µs): {timings['total'].cpu_us / TARGET_US:.2f}")
    for suffix, size in (("", documents), ("_1000", 1000)):
        ratio = timings[f"top_n_partial{suffix}"].cpu_us / timings[f"full_sort{suffix}"].cpu_us
        lines.append(f"top-{top_n} of {size}: partial selection / full sort: {ratio:.2f}")
    return "\n".join(lines)


def format_in_flight(runs: Sequence[InFlight]) -> str:
    """The in-flight runs (one request, then many), and the throughput ratio of the last to the first."""
    lines = [
        "| in flight | requests | peak in flight | req/s | p50 ms | p95 ms | client CPU ms/req |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {run.concurrency} | {run.requests} | {run.max_in_flight} | {run.per_second:.1f} "
        f"| {run.p50_ms:.1f} | {run.p95_ms:.1f} | {run.client_cpu_ms:.2f} |"
        for run in runs
    ]
    lines.append(
        f"throughput ratio {runs[-1].concurrency} / {runs[0].concurrency} in flight: "
        f"{runs[-1].per_second / runs[0].per_second:.2f}"
    )
    return "\n".join(lines)
