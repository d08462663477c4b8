"""The GPU check's results: ``gpu-check.json`` (everything) and ``gpu-check.md`` (the tables to read)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

JSON_NAME = "gpu-check.json"
MARKDOWN_NAME = "gpu-check.md"


def write_report(report: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    """Write both files (replacing earlier ones: the check rewrites them after every stage)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / JSON_NAME, output_dir / MARKDOWN_NAME
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(format_markdown(report), encoding="utf-8")
    return json_path, md_path


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _hardware_lines(hw: dict[str, Any]) -> list[str]:
    gpu = hw.get("gpu") or {}
    versions = hw.get("versions", {})
    rows = [
        ("GPU", f"{gpu['name']}, {gpu['memory_gib']} GiB, compute {gpu['compute_capability']}" if gpu else "none"),
        ("GPU driver", gpu.get("driver") or "-"),
        ("torch / CUDA", f"{hw.get('torch')} / {hw.get('torch_cuda') or 'none'}"),
        ("CPU", f"{hw.get('cpu')}, {hw.get('cpu_count')} cores, {hw.get('memory_gib')} GiB"),
        ("Python", hw.get("python", "-")),
        ("packages", ", ".join(f"{k} {v}" for k, v in versions.items()) or "-"),
    ]
    return _table(("", ""), rows)


def _fp16_lines(figures: dict[str, Any] | None, title: str) -> list[str]:
    if not figures:
        return []
    lines = [f"### {title}", ""]
    for key in ("note", "weights_note", "unavailable"):
        if figures.get(key):
            lines += [f"- {figures[key]}"]
    lines += [""] if len(lines) > 2 else []
    rows = [
        (
            figures.get("engine", "-"),
            figures["pairs"],
            _num(figures["max_abs_diff"], ".3g"),
            _num(figures["tolerance"], "g"),
            "yes" if figures["within_tolerance"] else "**no**",
            _num(figures["top5_overlap"], ".2f"),
            _num(figures["kendall_tau"], ".3f"),
        )
    ]
    header = ("logits from", "pairs", "max abs Δlogit", "tolerance", "within", "top-5 overlap", "Kendall tau")
    return lines + _table(header, rows)


def _latency_lines(serving: dict[str, Any]) -> list[str]:
    levels = serving.get("levels") or []
    if not levels:
        return []
    saturation = sorted({lv["concurrency"] for lv in levels if lv["concurrency"] > 1})
    header = ["tokens/pair (mean)", "c=1 p50 ms", "c=1 p95 ms", "c=1 requests"]
    for c in saturation:
        header += [f"c={c} req/s", f"c={c} pairs/s", f"c={c} p95 ms"]
    rows = []
    for length in sorted({lv["pair_tokens"] for lv in levels}):
        at = {lv["concurrency"]: lv for lv in levels if lv["pair_tokens"] == length}
        one = at.get(1)
        mean = next(iter(at.values()))["mean_pair_tokens"]
        row: list[object] = [f"{length} ({mean:.0f})"]
        row += [_num(one["p50_ms"], ".1f"), _num(one["p95_ms"], ".1f"), one["requests"]] if one else ["-"] * 3
        for c in saturation:
            lv = at.get(c)
            row += (
                [_num(lv["requests_per_s"], ".1f"), _num(lv["pairs_per_s"], ".0f"), _num(lv["p95_ms"], ".1f")]
                if lv
                else ["-"] * 3
            )
        rows.append(row)
    failures = sum(lv["failures"] for lv in levels)
    notes = [f"{failures} failed requests (first: {serving.get('first_error')})" if failures else "no failed requests"]
    if serving.get("skipped_levels"):
        notes.append(f"skipped for lack of time: {', '.join(serving['skipped_levels'])}")
    if serving.get("parity_max_abs_diff") is not None:
        notes.append(f"served vs in-process scores on one request: max |Δ| {serving['parity_max_abs_diff']:.3g}")
    return _table(header, rows) + [f"- {note}" for note in notes] + [""]


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: mode and runtime, hardware, FP16 agreement, export, latency, stages."""
    serving = report.get("serving") or {}
    lines = [
        "# GPU check",
        "",
        f"- mode: **{report['mode']}**; runtime: **{report['runtime']}**"
        + (f" ({report['runtime_reason']})" if report.get("runtime_reason") else ""),
        f"- command: `{report.get('command', '')}`",
        f"- model: {report.get('model', {}).get('description', '-')}",
        f"- result: {'ok' if not report.get('problems') else 'PROBLEMS: ' + '; '.join(report['problems'])}",
        "",
    ]
    missing = [name for name, found in (report.get("modules") or {}).items() if not found]
    if missing:
        needs = report.get("module_uses", {})
        lines += ["Missing modules: " + "; ".join(f"{m} ({needs.get(m, '?')})" for m in missing), ""]
    if report.get("hardware"):
        lines += ["## Hardware", "", *_hardware_lines(report["hardware"])]
    lines += ["## FP16 against FP32", ""]
    lines += _fp16_lines(report.get("fp16_check"), "PyTorch")
    onnx = report.get("onnx_check") or {}
    if onnx.get("fp16_vs_fp32"):
        lines += _fp16_lines({**onnx["fp16_vs_fp32"], "engine": onnx.get("engine")}, "ONNX Runtime")
        parity = onnx["fp32_vs_pytorch"]
        lines += [f"ONNX Runtime FP32 against PyTorch: max |Δlogit| {parity['max_abs_diff']:.3g}.", ""]
    elif onnx.get("skipped"):
        lines += [f"ONNX Runtime check: {onnx['skipped']}", ""]
    export = report.get("export") or {}
    if export:
        rows = [(name, f"{item['bytes'] / 2**20:.1f} MiB", item["seconds"]) for name, item in export.items()]
        lines += ["## Export", "", *_table(("graph", "size", "seconds"), rows)]
    if serving:
        lines += ["## End-to-end latency and throughput", "", f"- path: **{serving.get('path')}**"]
        if serving.get("reason"):
            lines.append(f"- why: {serving['reason']}")
        if serving.get("description"):
            lines.append(f"- {serving['description']}")
        lines += ["", *_latency_lines(serving)]
    stage_rows = [
        (name, s["status"], _num(s.get("seconds"), ".1f"), s.get("error") or s.get("reason") or "")
        for name, s in report.get("stages", {}).items()
    ]
    lines += ["## Stages", "", *_table(("stage", "status", "seconds", "detail"), stage_rows)]
    return "\n".join(lines)
