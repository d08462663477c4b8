"""The SLO gate: p95 latency and failure ratio checked at the end of a run.

The gate is evaluated on plain numbers (:class:`RunSummary`), so the same code judges a
Locust run (from its aggregated stats, on the master in distributed mode) and can be
tested without one. The verdict travels from the Locust process to ``reranker-loadtest``
as a small JSON file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SloError

DEFAULT_P95_MS = 200.0
DEFAULT_MAX_FAILURE_RATIO = 0.0

SHED_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
"""Failures that are the server refusing work (a full queue, an overloaded server): sheds."""
DEADLINE_CODE = "DEADLINE_EXCEEDED"
# Locust keys a failure by the locustfile's GrpcRequestFailed: "CODE: message" in one process,
# its repr "GrpcRequestFailed('CODE: message')" once a worker has sent it to the master.
_FAILURE_CODE = re.compile(r"""^(?:GrpcRequestFailed\(['"])?(?P<code>[A-Za-z_]+):""")


def failure_code(error: str) -> str | None:
    """The gRPC code (or client error class) of a failure as Locust's stats key it, ``None`` if unknown."""
    match = _FAILURE_CODE.match(error)
    return match.group("code") if match else None


def classify_failures(failures_by_error: Mapping[str, int]) -> tuple[int, int]:
    """(sheds, deadline misses) among failures keyed as Locust's stats key them."""
    codes = [(failure_code(error), count) for error, count in failures_by_error.items()]
    return (
        sum(count for code, count in codes if code in SHED_CODES),
        sum(count for code, count in codes if code == DEADLINE_CODE),
    )


@dataclass(frozen=True, kw_only=True)
class SloSettings:
    p95_ms: float = DEFAULT_P95_MS
    """Highest acceptable 95th percentile latency of successful and failed requests, in ms."""
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO
    """Highest acceptable share of failed requests (0 means none may fail)."""

    def __post_init__(self) -> None:
        if not self.p95_ms > 0 or math.isinf(self.p95_ms):
            raise SloError(f"p95 target must be a positive number of milliseconds, got {self.p95_ms}")
        if not 0.0 <= self.max_failure_ratio <= 1.0:
            raise SloError(f"failure ratio target must be in [0, 1], got {self.max_failure_ratio}")


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a run measured (all requests of the run, every endpoint together)."""

    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    duration_s: float
    candidates: int
    """Documents per request, to turn requests per second into pairs per second."""
    failures_by_error: dict[str, int] = field(default_factory=dict)
    shed: int = 0
    """Failures that were the server refusing work (UNAVAILABLE: a full queue, an overloaded server)."""
    deadline_misses: int = 0
    """Failures that were the call's deadline passing (DEADLINE_EXCEEDED)."""
    arrival_rate: float | None = None
    """Open-loop runs: the offered arrival rate in requests per second; ``None`` for closed-loop users."""
    requests_by_worker: dict[str, int] = field(default_factory=dict)
    """Distributed runs: requests each worker sent, as the master received them."""

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def shed_ratio(self) -> float:
        return self.shed / self.requests if self.requests else 0.0

    @property
    def goodput_per_s(self) -> float:
        """Successful requests per second: the load the service really carried."""
        return (self.requests - self.failures) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def pairs_per_s(self) -> float:
        return (self.requests - self.failures) * self.candidates / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    target: str
    observed: str
    passed: bool


@dataclass(frozen=True, kw_only=True)
class Verdict:
    slo: SloSettings
    summary: RunSummary
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "slo": asdict(self.slo),
            "summary": asdict(self.summary),
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        try:
            return cls(
                slo=SloSettings(**data["slo"]),
                summary=RunSummary(**data["summary"]),
                checks=tuple(Check(**c) for c in data["checks"]),
            )
        except (KeyError, TypeError) as exc:
            raise SloError(f"malformed SLO verdict: {exc}") from exc

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Verdict:
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise SloError(f"cannot read SLO verdict {path}: {exc}") from exc


def evaluate(summary: RunSummary, slo: SloSettings) -> Verdict:
    """Judge a run. A run without a single request fails: it proves nothing."""
    checks = (
        Check(
            name="requests",
            target="> 0",
            observed=str(summary.requests),
            passed=summary.requests > 0,
        ),
        Check(
            name="p95 latency",
            target=f"<= {slo.p95_ms:g} ms",
            observed=f"{summary.p95_ms:.1f} ms" if summary.requests else "n/a",
            passed=summary.requests > 0 and summary.p95_ms <= slo.p95_ms,
        ),
        Check(
            name="failure ratio",
            target=f"<= {slo.max_failure_ratio:g}",
            observed=f"{summary.failure_ratio:.4g} ({summary.failures}/{summary.requests})",
            passed=summary.failure_ratio <= slo.max_failure_ratio,
        ),
    )
    return Verdict(slo=slo, summary=summary, checks=checks)


def format_verdict(verdict: Verdict) -> str:
    """A plain-text table for terminals and CI logs."""
    s = verdict.summary
    rows = [("check", "target", "observed", "result")]
    rows += [(c.name, c.target, c.observed, "pass" if c.passed else "FAIL") for c in verdict.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"SLO verdict: {'PASS' if verdict.passed else 'FAIL'}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        f"run: {s.requests} requests in {s.duration_s:.1f} s = {s.requests_per_s:.2f} req/s, "
        f"{s.pairs_per_s:.0f} pairs/s ({s.candidates} candidates); "
        f"latency p50 {s.p50_ms:.1f} / p95 {s.p95_ms:.1f} / p99 {s.p99_ms:.1f} ms"
    )
    offered = f"open loop, offered {s.arrival_rate:g} req/s; " if s.arrival_rate is not None else ""
    lines.append(
        f"{offered}goodput {s.goodput_per_s:.2f} req/s; shed ratio {s.shed_ratio:.4g} ({s.shed}/{s.requests}); "
        f"deadline misses {s.deadline_misses}; p95 {s.p95_ms:.1f} ms"
    )
    if s.requests_by_worker:
        counts = ", ".join(f"{n}" for _, n in sorted(s.requests_by_worker.items()))
        lines.append(f"workers: {len(s.requests_by_worker)} (requests: {counts})")
    for error, count in sorted(s.failures_by_error.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"failure x{count}: {error}")
    return "\n".join(lines)
