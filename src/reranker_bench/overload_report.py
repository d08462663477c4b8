"""The overload benchmark's results: outcomes per level, the issue's targets, Markdown and JSON.

Pure numbers in, tables out: no server, no clock. :mod:`reranker_bench.overload` measures,
this module judges and writes, so the report logic is testable on any run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .machine import describe_machine

RECOVERY_TARGET_S = 1.0
"""The first request after the load stops must answer within this (the issue's target)."""
GOODPUT_TARGET = 0.9
"""At 2x and 4x offered load, goodput must stay at or above this share of the measured capacity."""
OVERLOAD_FACTOR = 2.0
"""Open-loop levels at or above this multiple of capacity are judged as overload."""
UNDERLOAD_FACTOR = 0.5
"""Open-loop levels at or below this multiple of capacity must shed nothing."""


class Kind(str, Enum):
    """How one request ended, as its caller saw it."""

    SUCCESS = "success"
    SHED = "shed"
    """The server (or the client's retry budget) refused it: ``ServerUnavailableError`` and subclasses."""
    DEADLINE = "deadline"
    """``DeadlineExceededError``: the caller's deadline passed first."""
    OTHER = "other"
    """Any other ``RerankerError``."""
    HUNG = "hung"
    """No answer and no error well past the deadline: the client itself failed to give up."""


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    seconds: float
    """From the call to its answer or its error, as the caller measured it."""
    error: str | None = None
    """The exception's class name, for every kind but success."""


@dataclass(frozen=True, kw_only=True)
class ServerWork:
    """What the server did for one level, from Triton's statistics before the level and after it drained."""

    completed: int
    """Ensemble requests Triton completed successfully (whether or not their caller still waited)."""
    failed: int
    """Ensemble requests that failed inside Triton (rejected, cancelled, timed out, errors)."""
    rows_computed: int
    """(query, document) rows ``reranker_model`` scored."""
    executions: int
    """``reranker_model`` executions (batches)."""
    step_compute: dict[str, tuple[float, int]]
    """Per step (tokenizer, model, ...): compute seconds (Triton's ``compute_*`` statistics, which
    count the requests a step completed) and the requests it completed."""

    @property
    def compute_s(self) -> float:
        return sum(seconds for seconds, _ in self.step_compute.values())

    failure_reasons: dict[str, int] = field(default_factory=dict)
    """``nv_inference_request_failure`` by ``model/reason`` from the metrics endpoint, where it has reasons."""
    step_counters: dict[str, int] = field(default_factory=dict)
    """The python steps' own counters (rows scored and skipped, requests abandoned), where they have them."""


@dataclass(frozen=True, kw_only=True)
class Recovery:
    """Right after the load stops: a 1-document probe, then one full request, then how long the backlog took."""

    probe: Outcome
    full: Outcome
    drained_s: float | None
    """Seconds from the end of the load until no request was pending in Triton; ``None``: not within the limit."""


@dataclass(frozen=True, kw_only=True)
class Capacity:
    per_s: float
    """Successful requests per second."""
    callers: int
    duration_s: float
    successes: int
    failures: int
    p50_ms: float
    p95_ms: float
    measured: bool = True
    """``False`` when the capacity was given on the command line instead of measured."""


def _percentile_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1e3) if values else None


@dataclass(frozen=True, kw_only=True)
class LevelResult:
    """One load level: open-loop arrivals at ``factor`` x capacity, or ``callers`` closed-loop callers."""

    name: str
    deadline_s: float
    duration_s: float
    documents: int
    outcomes: tuple[Outcome, ...]
    recovery: Recovery
    server: ServerWork | None
    factor: float | None = None
    """Open loop: the offered load as a multiple of the capacity."""
    offered_per_s: float | None = None
    """Open loop: the Poisson arrival rate."""
    callers: int | None = None
    """Closed loop: callers that give up after ``deadline_s`` and immediately send the next request."""
    arrival_lag_ms: tuple[float, float] | None = None
    """Open loop: p95 and max of how late arrivals left this process against their schedule.
    Large values mean the load generator, not the server, limited the offered load."""

    def count(self, kind: Kind) -> int:
        return sum(o.kind is kind for o in self.outcomes)

    def seconds(self, kind: Kind) -> list[float]:
        return [o.seconds for o in self.outcomes if o.kind is kind]

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def successes(self) -> int:
        return self.count(Kind.SUCCESS)

    @property
    def goodput_per_s(self) -> float:
        return self.successes / self.duration_s

    @property
    def shed(self) -> int:
        return self.count(Kind.SHED)

    @property
    def shed_ratio(self) -> float:
        return self.shed / self.sent if self.sent else 0.0

    @property
    def errors(self) -> dict[str, int]:
        """Non-successes by exception class name."""
        return dict(Counter(o.error or o.kind.value for o in self.outcomes if o.kind is not Kind.SUCCESS))

    def latency_ms(self, kind: Kind, q: float) -> float | None:
        return _percentile_ms(self.seconds(kind), q)

    @property
    def answered_in_time(self) -> int:
        """Requests whose caller got the answer: the level's successes, the probe and the full request."""
        return self.successes + sum(o.kind is Kind.SUCCESS for o in (self.recovery.probe, self.recovery.full))

    @property
    def abandoned_completed(self) -> int | None:
        """Requests the server completed for callers that had gone (not answered to anyone in time)."""
        if self.server is None:
            return None
        return max(0, self.server.completed - self.answered_in_time)

    @property
    def abandoned_compute_s(self) -> float | None:
        """Server compute not spent on requests answered in time: every step's compute minus what
        the answered requests cost at that step's mean per completed request. It covers requests
        completed for nobody and the steps' work on requests a later step refused or cancelled."""
        if self.server is None:
            return None
        useful = sum(
            seconds / done * self.answered_in_time for seconds, done in self.server.step_compute.values() if done
        )
        return max(0.0, self.server.compute_s - useful)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "factor": self.factor,
            "offered_per_s": self.offered_per_s,
            "callers": self.callers,
            "deadline_s": self.deadline_s,
            "duration_s": self.duration_s,
            "documents": self.documents,
            "sent": self.sent,
            "successes": self.successes,
            "goodput_per_s": self.goodput_per_s,
            "success_p50_ms": self.latency_ms(Kind.SUCCESS, 50),
            "success_p95_ms": self.latency_ms(Kind.SUCCESS, 95),
            "shed": self.shed,
            "shed_ratio": self.shed_ratio,
            "shed_p95_ms": self.latency_ms(Kind.SHED, 95),
            "deadline_misses": self.count(Kind.DEADLINE),
            "other_errors": self.count(Kind.OTHER),
            "hung": self.count(Kind.HUNG),
            "errors": self.errors,
            "arrival_lag_ms": None
            if self.arrival_lag_ms is None
            else dict(zip(("p95", "max"), self.arrival_lag_ms, strict=True)),
            "server": None
            if self.server is None
            else {
                "step_compute_s": {name: seconds for name, (seconds, _) in self.server.step_compute.items()},
                "step_completed": {name: done for name, (_, done) in self.server.step_compute.items()},
                "completed": self.server.completed,
                "failed": self.server.failed,
                "rows_computed": self.server.rows_computed,
                "rows_answered_in_time": self.successes * self.documents,
                "executions": self.server.executions,
                "compute_s": self.server.compute_s,
                "abandoned_completed": self.abandoned_completed,
                "abandoned_compute_s": self.abandoned_compute_s,
                "failure_reasons": self.server.failure_reasons,
                "step_counters": self.server.step_counters,
            },
            "recovery": {
                "probe": _outcome_json(self.recovery.probe),
                "full": _outcome_json(self.recovery.full),
                "drained_s": self.recovery.drained_s,
            },
        }


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {"kind": outcome.kind.value, "seconds": outcome.seconds, "error": outcome.error}


@dataclass(frozen=True)
class TargetCheck:
    level: str
    target: str
    observed: str
    passed: bool


def check_targets(capacity: Capacity, levels: list[LevelResult]) -> list[TargetCheck]:
    """The issue's targets, judged on the open-loop levels (closed-loop cases reproduce the old table only)."""
    checks = []
    for level in levels:
        if level.factor is None:
            continue
        if level.factor >= OVERLOAD_FACTOR:
            floor = GOODPUT_TARGET * capacity.per_s
            checks.append(
                TargetCheck(
                    level.name,
                    f"goodput >= {GOODPUT_TARGET:.0%} of capacity ({floor:.1f} req/s)",
                    f"{level.goodput_per_s:.1f} req/s",
                    level.goodput_per_s >= floor,
                )
            )
            p95 = level.latency_ms(Kind.SUCCESS, 95)
            checks.append(
                TargetCheck(
                    level.name,
                    f"p95 of successes <= deadline ({level.deadline_s * 1e3:.0f} ms)",
                    "no successes" if p95 is None else f"{p95:.0f} ms",
                    p95 is not None and p95 <= level.deadline_s * 1e3,
                )
            )
            odd = level.count(Kind.OTHER) + level.count(Kind.HUNG)
            checks.append(
                TargetCheck(
                    level.name,
                    "every non-success is a shed or a deadline miss (no hang, no other error)",
                    f"{odd} other" if odd else "yes",
                    odd == 0,
                )
            )
            probe = level.recovery.probe
            checks.append(
                TargetCheck(
                    level.name,
                    f"first request after the load answers in <= {RECOVERY_TARGET_S:g} s",
                    _outcome_cell(probe),
                    probe.kind is Kind.SUCCESS and probe.seconds <= RECOVERY_TARGET_S,
                )
            )
        if level.factor <= UNDERLOAD_FACTOR:
            checks.append(TargetCheck(level.name, "zero shed", str(level.shed), level.shed == 0))
    return checks


def _outcome_cell(outcome: Outcome) -> str:
    if outcome.kind is Kind.SUCCESS:
        return f"{outcome.seconds:.2f} s"
    return f"{outcome.error or outcome.kind.value} after {outcome.seconds:.2f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@dataclass(frozen=True, kw_only=True)
class OverloadReport:
    command: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    capacity: Capacity
    levels: list[LevelResult]
    """Open-loop levels, in the order run."""
    closed_loop: list[LevelResult]
    """Closed-loop cases, in the order run."""

    @property
    def targets(self) -> list[TargetCheck]:
        return check_targets(self.capacity, self.levels)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "settings": self.settings,
            "machine": self.machine,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "capacity": {
                "per_s": self.capacity.per_s,
                "callers": self.capacity.callers,
                "duration_s": self.capacity.duration_s,
                "successes": self.capacity.successes,
                "failures": self.capacity.failures,
                "p50_ms": self.capacity.p50_ms,
                "p95_ms": self.capacity.p95_ms,
                "measured": self.capacity.measured,
            },
            "open_loop": [level.to_json() for level in self.levels],
            "closed_loop": [level.to_json() for level in self.closed_loop],
            "targets": [
                {"level": t.level, "target": t.target, "observed": t.observed, "passed": t.passed} for t in self.targets
            ],
        }

    def write(self, output_dir: Path) -> tuple[Path, Path]:
        output_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = output_dir / "overload.json", output_dir / "overload.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        md_path.write_text(format_markdown(self) + "\n", encoding="utf-8")
        return json_path, md_path


def _server_cells(level: LevelResult) -> tuple[str, str]:
    server = level.server
    if server is None:
        return "-", "-"
    gone = level.abandoned_completed or 0
    wasted = level.abandoned_compute_s or 0.0
    share = wasted / server.compute_s if server.compute_s > 0 else 0.0
    reasons = ", ".join(f"{k} {v}" for k, v in sorted({**server.failure_reasons, **server.step_counters}.items()))
    rows = f"{server.rows_computed} / {level.successes * level.documents}"
    return f"{gone} req, {wasted:.1f} s ({share:.0%}); rows {rows}", reasons or "-"


def _drained(recovery: Recovery) -> str:
    return "not drained" if recovery.drained_s is None else f"{recovery.drained_s:.1f} s"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return lines


def format_markdown(report: OverloadReport) -> str:
    s = report.settings
    c = report.capacity
    lines = [
        "## Overload",
        "",
        f"- command: `{report.command}`",
        f"- hardware: {describe_machine(report.machine)}; load average before {report.load_before[0]:.2f}, "
        f"after {report.load_after[0]:.2f}",
        f"- workload: {s['documents']} candidates of {s.get('document_passages', 1)} test-corpus sentences per "
        f"request, client deadline {s['deadline_s']:g} s, "
        f"{s['level_duration_s']:g} s per level; server: {s['server']}",
        f"- capacity: {c.per_s:.1f} req/s "
        + (
            f"({c.callers} closed-loop callers for {c.duration_s:.0f} s, p50 {c.p50_ms:.0f} / p95 {c.p95_ms:.0f} ms)"
            if c.measured
            else "(given, not measured)"
        ),
    ]
    header = (
        "level",
        "offered req/s",
        "sent",
        "goodput req/s",
        "p50 / p95 of successes ms",
        "shed (p95 ms)",
        "deadline misses",
        "other / hung",
        "computed for gone callers",
        "Triton failures; steps' counters",
        "probe after load",
        "first full request",
        "backlog drained",
        "arrival lag p95 / max ms",
    )
    if report.levels:
        lines += ["", "### Open loop (Poisson arrivals)", ""]
        rows: list[tuple[str, ...]] = [header]
        for level in report.levels:
            computed, reasons = _server_cells(level)
            rows.append(
                (
                    level.name,
                    f"{level.offered_per_s:.1f}" if level.offered_per_s is not None else "-",
                    str(level.sent),
                    f"{level.goodput_per_s:.1f} ({level.goodput_per_s / c.per_s:.0%})"
                    if c.per_s
                    else f"{level.goodput_per_s:.1f}",
                    f"{_ms(level.latency_ms(Kind.SUCCESS, 50))} / {_ms(level.latency_ms(Kind.SUCCESS, 95))}",
                    f"{level.shed_ratio:.0%} ({_ms(level.latency_ms(Kind.SHED, 95))})",
                    str(level.count(Kind.DEADLINE)),
                    f"{level.count(Kind.OTHER)} / {level.count(Kind.HUNG)}",
                    computed,
                    reasons,
                    _outcome_cell(level.recovery.probe),
                    _outcome_cell(level.recovery.full),
                    _drained(level.recovery),
                    "-" if level.arrival_lag_ms is None else "{:.0f} / {:.0f}".format(*level.arrival_lag_ms),
                )
            )
        lines += _table(rows)
    if report.closed_loop:
        lines += ["", "### Closed-loop callers that give up at their deadline", ""]
        rows = [
            (
                "callers, deadline",
                "goodput req/s",
                "p95 of successes ms",
                "deadline misses",
                "shed",
                "other / hung",
                "computed for gone callers",
                "probe after load",
                "backlog drained",
            )
        ]
        for level in report.closed_loop:
            computed, _ = _server_cells(level)
            rows.append(
                (
                    level.name,
                    f"{level.goodput_per_s:.2f}",
                    _ms(level.latency_ms(Kind.SUCCESS, 95)),
                    str(level.count(Kind.DEADLINE)),
                    str(level.shed),
                    f"{level.count(Kind.OTHER)} / {level.count(Kind.HUNG)}",
                    computed,
                    _outcome_cell(level.recovery.probe),
                    _drained(level.recovery),
                )
            )
        lines += _table(rows)
    targets = report.targets
    if targets:
        lines += ["", "### Targets", ""]
        lines += _table(
            [("level", "target", "observed", "result")]
            + [(t.level, t.target, t.observed, "pass" if t.passed else "MISSED") for t in targets]
        )
    lines += [
        "",
        "*computed for gone callers*: ensemble requests Triton completed beyond those answered in time; "
        "the steps' compute beyond what the requests answered in time cost (each step's mean per completed "
        "request), with its share of all compute; rows scored by `reranker_model` / rows answered in time. "
        "*Triton failures*: `nv_inference_request_failure` by model/reason; *steps' counters*: the python "
        "steps' own `reranker_*_total` metrics (rows scored/skipped, requests abandoned), where they exist. "
        "*arrival lag*: how late arrivals left the load generator against their Poisson schedule; large "
        "values mean the generator (sharing the machine), not the server, limited the offered load.",
    ]
    return "\n".join(lines)
