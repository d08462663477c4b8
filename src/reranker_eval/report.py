"""The eval report as JSON (for machines) and Markdown (for people)."""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata
from typing import Any

from .evaluate import FIRST_STAGE, EvalReport

__all__ = ["to_json", "to_markdown"]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def to_dict(report: EvalReport) -> dict[str, Any]:
    payload = dataclasses.asdict(report)
    payload["versions"] = {name: _version(name) for name in ("triton-reranker", "ir-measures")}
    return payload


def to_json(report: EvalReport) -> str:
    return json.dumps(to_dict(report), ensure_ascii=False, indent=2) + "\n"


def to_markdown(report: EvalReport) -> str:
    """Measures per system (with the change against the first stage), then agreement per pair."""
    lines = [
        f"# reranker-eval: {report.dataset}",
        "",
        f"{report.queries} queries ({report.judged} with a relevant document), {report.candidates} candidates "
        f"({report.candidates / max(report.queries, 1):.1f} per query), {report.format} layout.",
    ]
    lines += [f"Note: {note}." for note in report.notes]
    baseline = report.systems[0].measures
    names = list(baseline)
    if names:
        lines += [
            "",
            "## Ranking quality",
            "",
            "Means over the queries with a relevant document; in brackets the change against the first-stage order.",
            "",
            "| system | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for system in report.systems:
            cells = []
            for name in names:
                value = system.measures[name]
                delta = "" if system.name == FIRST_STAGE else f" ({value - baseline[name]:+.3f})"
                cells.append(f"{value:.3f}{delta}")
            label = system.name if system.address is None else f"{system.name} ({system.address})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if report.agreement:
        k = report.agreement[0].k
        lines += [
            "",
            "## Agreement between deployments",
            "",
            f"Top-{k} overlap: the share of the reference's top {k} that the candidate also ranks in its top {k}; "
            "Kendall tau: Kendall's tau-b of the two orders of all candidates; both are means over "
            f"{report.agreement[0].queries} queries. Δ nDCG@10: the candidate's mean change against the reference, "
            "with the judged queries it makes worse and better, and the p-value of a two-sided paired t-test "
            "(small: the change is unlikely to be chance).",
            "",
            f"| reference | candidate | top-{k} overlap | Kendall tau | Δ nDCG@10 | worse / better | p-value |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for pair in report.agreement:
            change = "n/a" if pair.ndcg_change is None else f"{pair.ndcg_change:+.4f}"
            p_value = "n/a" if pair.p_value is None else f"{pair.p_value:.3g}"
            lines.append(
                f"| {pair.reference} | {pair.candidate} | {pair.top_k_overlap:.3f} | {pair.kendall_tau:.3f} | "
                f"{change} | {pair.queries_worse} / {pair.queries_better} | {p_value} |"
            )
        worst = [pair for pair in report.agreement if pair.most_worse]
        if worst:
            lines += [""]
            lines += [
                f"Largest nDCG@10 drops, {pair.candidate} against {pair.reference}: {', '.join(pair.most_worse)}."
                for pair in worst
            ]
    return "\n".join(lines) + "\n"
