"""``reranker-bench overload``: its report logic on plain numbers, its command line, and a short real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reranker_bench.errors import BenchmarkError
from reranker_bench.overload import (
    CallerCase,
    OverloadSettings,
    build_requests,
    parse_levels,
    parse_metrics,
    run_overload_benchmark,
    step_counters,
)
from reranker_bench.overload_report import (
    Capacity,
    Kind,
    LevelResult,
    Outcome,
    OverloadReport,
    Recovery,
    ServerWork,
    check_targets,
    format_markdown,
)
from reranker_common import EXIT_USAGE

BIN = Path(sys.executable).parent


def _capacity(per_s: float = 20.0) -> Capacity:
    return Capacity(per_s=per_s, callers=8, duration_s=10.0, successes=int(per_s * 10), failures=0, p50_ms=1, p95_ms=2)


def _level(
    factor: float,
    outcomes: list[Outcome],
    *,
    probe_s: float = 0.01,
    server: ServerWork | None = None,
    duration_s: float = 10.0,
) -> LevelResult:
    ok = Outcome(Kind.SUCCESS, probe_s)
    return LevelResult(
        name=f"{factor:g}x",
        factor=factor,
        offered_per_s=factor * 20,
        deadline_s=1.0,
        duration_s=duration_s,
        documents=50,
        outcomes=tuple(outcomes),
        recovery=Recovery(probe=ok, full=ok, drained_s=probe_s),
        server=server,
    )


def test_level_numbers_come_from_the_outcomes() -> None:
    outcomes = (
        [Outcome(Kind.SUCCESS, 0.1)] * 180
        + [Outcome(Kind.SHED, 0.002, "OverloadedError")] * 15
        + [Outcome(Kind.DEADLINE, 1.0, "DeadlineExceededError")] * 5
    )
    # The server completed 190 ensemble requests: 180 answered in time, the probe and the full
    # request after the load, and 8 whose callers had gone. The tokenizer also worked on 10
    # requests the model step then refused: 200 at 0.02 s each, the model 190 at 0.08 s each.
    server = ServerWork(
        completed=190,
        failed=20,
        rows_computed=9_500,
        executions=400,
        step_compute={"reranker_tokenizer": (4.0, 200), "reranker_model": (15.2, 190)},
    )
    level = _level(2, outcomes, server=server)
    assert (level.sent, level.successes, level.shed, level.count(Kind.DEADLINE)) == (200, 180, 15, 5)
    assert level.goodput_per_s == pytest.approx(18.0)
    assert level.shed_ratio == pytest.approx(0.075)
    assert level.latency_ms(Kind.SUCCESS, 95) == pytest.approx(100.0)
    assert level.latency_ms(Kind.SHED, 95) == pytest.approx(2.0)
    assert level.errors == {"OverloadedError": 15, "DeadlineExceededError": 5}
    assert level.abandoned_completed == 8
    # All compute, less what the 182 answered requests cost at each step's mean per request.
    assert server.compute_s == pytest.approx(19.2)
    assert level.abandoned_compute_s == pytest.approx(19.2 - 182 * (0.02 + 0.08))
    data = level.to_json()
    assert data["server"]["rows_answered_in_time"] == 180 * 50
    assert json.loads(json.dumps(data)) == data  # plain JSON


def test_targets_follow_the_issue() -> None:
    capacity = _capacity(20.0)
    healthy = [
        _level(0.5, [Outcome(Kind.SUCCESS, 0.05)] * 100),
        _level(
            4,
            [Outcome(Kind.SUCCESS, 0.5)] * 190
            + [Outcome(Kind.SHED, 0.001, "OverloadedError")] * 500
            + [Outcome(Kind.DEADLINE, 1.0, "DeadlineExceededError")] * 10,
        ),
    ]
    checks = check_targets(capacity, healthy)
    assert all(c.passed for c in checks), checks
    assert {c.level for c in checks} == {"0.5x", "4x"}
    assert len([c for c in checks if c.level == "4x"]) == 4

    collapsed = [
        _level(0.5, [Outcome(Kind.SUCCESS, 0.05)] * 99 + [Outcome(Kind.SHED, 0.001, "ServerUnavailableError")]),
        _level(
            2,
            [Outcome(Kind.SUCCESS, 0.99)] * 10
            + [Outcome(Kind.DEADLINE, 1.0, "DeadlineExceededError")] * 300
            + [Outcome(Kind.HUNG, 6.0, "no answer past the deadline")],
            probe_s=15.6,
        ),
    ]
    missed = {(c.level, c.target.split(" ")[0]) for c in check_targets(capacity, collapsed) if not c.passed}
    assert missed == {("0.5x", "zero"), ("2x", "goodput"), ("2x", "every"), ("2x", "first")}


def test_report_writes_markdown_and_json(tmp_path: Path) -> None:
    from reranker_bench.machine import machine_info

    closed = LevelResult(
        name="32, 1 s",
        callers=32,
        deadline_s=1.0,
        duration_s=10.0,
        documents=50,
        outcomes=(Outcome(Kind.SUCCESS, 0.9), Outcome(Kind.DEADLINE, 1.0, "DeadlineExceededError")),
        recovery=Recovery(probe=Outcome(Kind.SUCCESS, 15.6), full=Outcome(Kind.SUCCESS, 0.02), drained_s=None),
        server=ServerWork(
            completed=300,
            failed=0,
            rows_computed=15_000,
            executions=300,
            step_compute={"reranker_model": (30.0, 300)},
            failure_reasons={"reranker/CANCELED": 3},
        ),
    )
    report = OverloadReport(
        command="reranker-bench overload",
        settings={"documents": 50, "deadline_s": 1.0, "level_duration_s": 10.0, "server": "test"},
        machine=machine_info(),
        load_before=(1.0, 1.0, 1.0),
        load_after=(2.0, 2.0, 2.0),
        capacity=_capacity(),
        levels=[_level(2, [Outcome(Kind.SUCCESS, 0.3)] * 5)],
        closed_loop=[closed],
    )
    json_path, md_path = report.write(tmp_path)
    text = md_path.read_text()
    assert "| 2x | 40.0 | 5 |" in text
    assert "| 32, 1 s | 0.10 |" in text and "15.60 s" in text and "not drained" in text
    # 300 completed - 1 answered in time - probe - full request; 0.1 s each for them
    assert "297 req, 29.7 s (99%)" in text
    data = json.loads(json_path.read_text())
    assert data["closed_loop"][0]["server"]["failure_reasons"] == {"reranker/CANCELED": 3}
    assert data["targets"] and data["capacity"]["per_s"] == 20.0
    assert format_markdown(report) + "\n" == text


def test_metrics_are_parsed_by_name_and_labels() -> None:
    text = "\n".join(
        [
            "# HELP nv_inference_request_failure Number of failed inference requests",
            'nv_inference_request_failure{model="reranker_model",reason="REJECTED",version="1"} 12',
            'nv_inference_request_failure{model="reranker",reason="CANCELED",version="1"} 3',
            'nv_inference_pending_request_count{model="reranker_model",version="1"} 4',
            'reranker_rows_skipped_total{step="reranker_model",version="1",model="reranker_model"} 350',
            'reranker_requests_abandoned_total{reason="deadline",step="reranker_tokenizer"} 7',
        ]
    )
    failures = parse_metrics(text, "nv_inference_request_failure")
    assert [(labels["model"], labels["reason"], value) for labels, value in failures] == [
        ("reranker_model", "REJECTED", 12.0),
        ("reranker", "CANCELED", 3.0),
    ]
    assert parse_metrics(text, "nv_inference_pending_request_count")[0][1] == 4.0
    assert step_counters(text) == {
        "rows_skipped{model=reranker_model,step=reranker_model,version=1}": 350,
        "requests_abandoned{reason=deadline,step=reranker_tokenizer}": 7,
    }


def test_requests_join_test_corpus_sentences() -> None:
    from reranker_export.testmodels import corpus

    sentences = {e.text for e in corpus() if e.kind == "passage"}
    single = build_requests(50, 1, count=4)
    assert all(len(documents) == 50 and set(documents) <= sentences for _, documents in single)
    joined = build_requests(50, 6, count=4)
    assert len({documents for _, documents in joined}) == 4  # distinct requests
    first = joined[0][1][0]
    assert first.startswith(single[0][1][0]) and sum(s in first for s in sentences) >= 6


def test_settings_refuse_what_cannot_run() -> None:
    assert parse_levels("0.5, 1,2,4") == (0.5, 1.0, 2.0, 4.0)
    assert parse_levels("") == ()
    assert CallerCase.parse_list("16:2,32:1") == (CallerCase(16, 2.0), CallerCase(32, 1.0))
    for bad in ("0,1", "x"):
        with pytest.raises(BenchmarkError):
            parse_levels(bad)
    for bad_case in ("32", "0:1", "4:0", "a:b"):
        with pytest.raises(BenchmarkError):
            CallerCase.parse(bad_case)
    with pytest.raises(BenchmarkError, match="nothing to run"):
        OverloadSettings(levels=())
    with pytest.raises(BenchmarkError):
        OverloadSettings(deadline_s=0)
    with pytest.raises(BenchmarkError):
        OverloadSettings(document_passages=0)


def test_a_refusal_by_the_client_is_told_from_a_server_shed() -> None:
    import grpc

    from reranker_bench.overload import error_label
    from reranker_client import OverloadedError

    local = OverloadedError("infer: ... so the client refused this one without sending it", code=None)
    shed = OverloadedError("infer: UNAVAILABLE: Exceeds maximum queue size", code=grpc.StatusCode.UNAVAILABLE)
    assert error_label(local) == "OverloadedError: refused by the client"
    assert error_label(shed) == "OverloadedError: Exceeds maximum queue size"


@pytest.mark.parametrize(
    "args", [["--levels", "0,2"], ["--closed-loop", "32"], ["--deadline-s", "-1"], ["--metrics-url", "http://x"]]
)
def test_cli_usage_errors_are_one_line(args: list[str]) -> None:
    done = subprocess.run([BIN / "reranker-bench", "overload", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.startswith("reranker-bench: error:") and "Traceback" not in done.stderr


def test_short_run_against_a_real_server(triton_server: Any, tmp_path: Path) -> None:
    """Capacity, one level under and one over it, one closed-loop case: the accounting adds up."""
    progress: list[str] = []
    settings = OverloadSettings(
        levels=(0.5, 2.0),
        level_duration_s=3.0,
        capacity_duration_s=3.0,
        capacity_callers=4,
        documents=20,
        document_passages=2,
        closed_loop=(CallerCase(4, 0.5),),
        probe_timeout_s=60.0,
        drain_timeout_s=60.0,
        triton_url=triton_server.grpc_url,
        metrics_url=triton_server.metrics_url,
    )
    report = run_overload_benchmark(settings, command="test", progress=progress.append)
    assert report.capacity.measured and report.capacity.successes > 0 and report.capacity.failures == 0
    assert [level.name for level in report.levels] == ["0.5x", "2x"]
    for level in [*report.levels, *report.closed_loop]:
        assert level.sent == sum(level.count(kind) for kind in Kind)
        assert level.count(Kind.HUNG) == 0 and level.count(Kind.OTHER) == 0, level.errors
        # Every level's requests either succeeded or ended at their deadline or a shed; the server
        # scored at least the rows it answered in time, and its backlog drained after the level.
        server = level.server
        assert server is not None
        assert server.completed >= level.successes
        assert server.rows_computed >= level.successes * settings.documents
        assert level.recovery.probe.kind is Kind.SUCCESS and level.recovery.full.kind is Kind.SUCCESS
        assert level.recovery.drained_s is not None
    under, over = report.levels
    assert under.successes > 0
    # Open loop: the arrivals follow the offered rate, not the server's pace (Poisson counts:
    # a wide band around rate x duration).
    for level in report.levels:
        expected = (level.offered_per_s or 0) * level.duration_s
        assert 0.5 * expected <= level.sent <= 1.5 * expected, (level.name, level.sent, expected)
    assert over.sent > under.sent
    json_path, md_path = report.write(tmp_path)
    data = json.loads(json_path.read_text())
    assert [level["name"] for level in data["open_loop"]] == ["0.5x", "2x"]
    assert data["closed_loop"][0]["callers"] == 4
    assert data["settings"]["client_throttle"] == {"multiplier": 2.0, "window_s": 3.0}  # what ran
    assert {t["level"] for t in data["targets"]} == {"0.5x", "2x"}
    assert "| 0.5x |" in md_path.read_text() and any("capacity:" in line for line in progress)
