"""``reranker-loadtest``: Locust headless against a Triton reranker, with an SLO verdict.

Exit codes (the project's convention, ``reranker_common``): 0 the run met the SLO; 1 it did not,
or it could not be made (target unreachable, Locust failed; the last line says which); 2 bad
arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reranker_client.config import ENSEMBLE_NAME
from reranker_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, HelpFormatter

from .errors import LoadtestError
from .runner import (
    DEFAULT_REQUEST_POOL,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_RUN_TIME_S,
    DEFAULT_TARGET,
    DEFAULT_USERS,
    LoadtestSettings,
    locustfile_path,
    run_loadtest,
    split_passthrough,
)
from .slo import DEFAULT_MAX_FAILURE_RATIO, DEFAULT_P95_MS, SloSettings, format_verdict
from .workload import (
    DEFAULT_CANDIDATES,
    DEFAULT_DOCUMENT_WORDS,
    DEFAULT_QUERY_WORDS,
    DEFAULT_SEED,
    LengthDistribution,
    WorkloadSettings,
)

PROG = "reranker-loadtest"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Load-test the Triton reranker over gRPC with Locust (headless) and check the SLO: "
            "p95 latency and failure ratio. Writes CSV and HTML reports and a verdict.json; "
            "exits 1 when the SLO is violated. Arguments after '--' go to Locust unchanged "
            "(e.g. '-- --loglevel DEBUG')."
        ),
        formatter_class=HelpFormatter,
    )
    target = parser.add_argument_group("target")
    target.add_argument("--target", default=DEFAULT_TARGET, help="Triton gRPC address host:port")
    target.add_argument("--model", default=ENSEMBLE_NAME, help="model to call (the ensemble)")
    target.add_argument(
        "--request-timeout-s", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, help="deadline of one call"
    )
    target.add_argument(
        "--no-check-target",
        action="store_true",
        help="start the load without checking that the model is ready first",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "-u",
        "--users",
        type=int,
        default=DEFAULT_USERS,
        help="concurrent closed-loop users; with --arrival-rate, the arrival sources the rate is split across",
    )
    load.add_argument(
        "--arrival-rate",
        type=float,
        default=None,
        help="open loop: requests per second offered by all users together, Poisson arrivals that do not "
        "wait for earlier answers (default: closed-loop users); set --request-timeout-s to the callers' deadline",
    )
    load.add_argument(
        "-r", "--spawn-rate", type=float, default=None, help="users started per second (default: all at once)"
    )
    load.add_argument(
        "-t", "--run-time-s", type=float, default=DEFAULT_RUN_TIME_S, help="duration of the run, in seconds"
    )
    load.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Locust processes here; above 1: a master and that many workers (-1: one per core)",
    )
    load.add_argument("--live-stats", action="store_true", help="print Locust's stats table during the run")
    workload = parser.add_argument_group("workload")
    workload.add_argument("--candidates", type=int, default=DEFAULT_CANDIDATES, help="passages per request")
    workload.add_argument(
        "--query-words",
        default=DEFAULT_QUERY_WORDS,
        help="query length in words: KIND:LOW-HIGH (uniform or normal)",
    )
    workload.add_argument(
        "--document-words", default=DEFAULT_DOCUMENT_WORDS, help="passage length in words: KIND:LOW-HIGH"
    )
    workload.add_argument("--languages", default="", help="comma-separated languages (default: all bundled word lists)")
    workload.add_argument("--seed", type=int, default=DEFAULT_SEED, help="workload seed")
    workload.add_argument(
        "--request-pool", type=int, default=DEFAULT_REQUEST_POOL, help="distinct requests generated per Locust process"
    )
    slo = parser.add_argument_group("SLO gate")
    slo.add_argument("--slo-p95-ms", type=float, default=DEFAULT_P95_MS, help="p95 latency bound in ms")
    slo.add_argument(
        "--slo-max-failure-ratio",
        type=float,
        default=DEFAULT_MAX_FAILURE_RATIO,
        help="highest share of failed requests",
    )
    parser.add_argument(
        "--report-dir", type=Path, default=Path("loadtest-report"), help="where CSV, HTML and verdict.json go"
    )
    parser.add_argument(
        "--print-locustfile",
        action="store_true",
        help="print the locustfile's path (for 'locust -f' in distributed runs) and exit",
    )
    return parser


def settings_from_args(args: argparse.Namespace, extra: tuple[str, ...]) -> LoadtestSettings:
    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip()) or None
    return LoadtestSettings(
        target=args.target,
        model=args.model,
        users=args.users,
        arrival_rate=args.arrival_rate,
        spawn_rate=args.spawn_rate,
        run_time_s=args.run_time_s,
        request_timeout_s=args.request_timeout_s,
        request_pool=args.request_pool,
        processes=args.processes,
        workload=WorkloadSettings(
            candidates=args.candidates,
            query_words=LengthDistribution.parse(args.query_words),
            document_words=LengthDistribution.parse(args.document_words),
            languages=languages,
            seed=args.seed,
        ),
        slo=SloSettings(p95_ms=args.slo_p95_ms, max_failure_ratio=args.slo_max_failure_ratio),
        report_dir=args.report_dir,
        live_stats=args.live_stats,
        check_target=not args.no_check_target,
        extra_locust_args=extra,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ours, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(ours)
    if args.print_locustfile:
        print(locustfile_path())
        return 0
    try:
        settings = settings_from_args(args, extra)
    except LoadtestError as exc:  # settings that cannot hold together: a usage error
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        load = (
            f"{settings.users} users"
            if settings.arrival_rate is None
            else f"open loop, {settings.arrival_rate:g} req/s from {settings.users} users"
        )
        print(
            f"{PROG}: {load} against {settings.target} ({settings.model}) for "
            f"{settings.run_time_s:g} s, {settings.workload.candidates} candidates per request; "
            f"SLO p95 <= {settings.slo.p95_ms:g} ms, failure ratio <= {settings.slo.max_failure_ratio:g}",
            flush=True,
        )
        result = run_loadtest(settings)
    except LoadtestError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.verdict is None:
        print(
            f"{PROG}: error: Locust exited with code {result.exit_code} before judging the run (see its output above)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print()
    print(format_verdict(result.verdict))
    print(f"reports: {settings.csv_prefix}_*.csv, {settings.html_path}, {settings.verdict_path}")
    return EXIT_OK if result.exit_code == 0 else EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
