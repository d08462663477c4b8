"""``reranker-bench``: every benchmark of the project behind one command.

    reranker-bench [compare] [OPTIONS]     this deployment vs the reference stack (the default)
    reranker-bench serving [OPTIONS]       where the time of one request goes, against a naive run
    reranker-bench client [OPTIONS]        the client's own cost, and requests in flight
    reranker-bench reference-server ...    run the reference server (FastAPI + FlagReranker) alone
    reranker-bench gpu-check [OPTIONS]     one prepared run on a CUDA GPU machine (see reranker_bench.gpu_check)
    reranker-bench gateway [OPTIONS]       the HTTP gateway's overhead against direct gRPC, side by side
    reranker-bench heal --repository R     kill a replica's python stubs under load: detection, recovery, failures
    reranker-bench overload [OPTIONS]      goodput, shedding and recovery at 0.5-4x capacity (open loop)
    reranker-bench precision [OPTIONS]     cpu profile graphs: FP32, fused FP32, INT8, OpenVINO side by side

Exit codes: 0 done, 1 the benchmark failed (or missed its target), 2 usage error, 130 interrupted.
Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reranker_common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    HelpFormatter,
    Progress,
    int_list,
    progress_printer,
)
from reranker_loadtest.errors import LoadtestError
from reranker_loadtest.workload import WorkloadSettings

from .compare import BenchSettings, Device
from .errors import BenchmarkError
from .reference import REFERENCE_SUBCOMMAND, ReferenceSettings, Scheduling
from .serving import ServingBenchSettings, serving_settings

PROG = "reranker-bench"
COMPARE, SERVING, CLIENT, GPU_CHECK = "compare", "serving", "client", "gpu-check"
GATEWAY, HEAL, OVERLOAD, PRECISION = "gateway", "heal", "overload", "precision"
COMMANDS = (COMPARE, SERVING, CLIENT, REFERENCE_SUBCOMMAND, GPU_CHECK, GATEWAY, HEAL, OVERLOAD, PRECISION)
DEFAULT_COMMAND = COMPARE

Configure = Callable[[argparse.Namespace], Any]
"""Checks a subcommand's arguments and returns its settings; raises for a usage error."""
Run = Callable[[Any, argparse.Namespace, str, Progress], int]
"""Runs a subcommand: (settings, arguments, the command line as typed, progress) -> exit code."""


def with_default_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``compare`` in front unless it names a subcommand or asks for the top-level help."""
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        return list(argv)
    return [DEFAULT_COMMAND, *argv]


def _subcommand(
    commands: Any, name: str, summary: str, description: str, configure: Configure, run: Run
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description, formatter_class=HelpFormatter
    )
    parser.set_defaults(configure=configure, run=run)
    return parser


# -- compare -----------------------------------------------------------------------------------


def _add_compare(commands: Any) -> None:
    parser = _subcommand(
        commands,
        COMPARE,
        "this deployment vs the reference stack, side by side (the default)",
        "Benchmark this deployment (Triton, cpu profile) against the reference stack "
        "(FastAPI + FlagReranker + uvicorn) side by side: same machine, weights and workload. "
        "Reports pairs/s, p50/p95/p99 and the ratios (a)/(b) per concurrency level.",
        _compare_settings,
        _run_compare,
    )
    parser.add_argument(
        "--device",
        choices=[d.value for d in Device],
        default=Device.CPU.value,
        help="cpu: 6-layer/384 XLM-R; gpu: full-size bge-reranker-v2-m3 architecture in FP16 (needs CUDA)",
    )
    parser.add_argument(
        "--concurrency", type=int_list, default=(1, 4, 16), help="comma-separated levels (default: 1,4,16)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="requests per level = max(min-requests, rounds x concurrency)"
    )
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--warmup-requests", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=50, help="passages per request")
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default: the workload's)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads per system (default: every core)")
    parser.add_argument(
        "--reference-scheduling",
        choices=[s.value for s in Scheduling],
        default=Scheduling.SERIAL.value,
        help="how the reference server runs concurrent requests",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("bench-work"), help="benchmark model and repository (reused)"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("bench-results"), help="bench.json, bench.md and server logs"
    )
    parser.add_argument(
        "--triton-url", default=None, help="use this running Triton (host:port) instead of starting one"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="serve this repository (exported from the work dir's model) instead of exporting one",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="then time each part of both stacks in-process (CPU mode)"
    )
    parser.add_argument(
        "--breakdown-only", action="store_true", help="only the in-process breakdown (model and repository exist)"
    )
    parser.add_argument(
        "--prepare-only", action="store_true", help="build the model and export the repository, then exit"
    )


def _compare_settings(args: argparse.Namespace) -> BenchSettings:
    workload = WorkloadSettings(candidates=args.candidates, **({"seed": args.seed} if args.seed is not None else {}))
    settings = BenchSettings(
        device=Device(args.device),
        concurrency=args.concurrency,
        rounds=args.rounds,
        min_requests=args.min_requests,
        warmup_requests=args.warmup_requests,
        workload=workload,
        threads=args.threads,
        reference_scheduling=Scheduling(args.reference_scheduling),
        work_dir=args.work_dir,
        output_dir=args.output_dir,
        triton_url=args.triton_url,
        breakdown=args.breakdown,
        repository=args.repository,
    )
    if args.breakdown_only and settings.device is not Device.CPU:
        raise BenchmarkError("the in-process breakdown runs in CPU mode only")
    return settings


def _run_compare(settings: BenchSettings, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .compare import prepare, run_benchmark, run_breakdown
    from .machine import machine_info
    from .reports import format_breakdown, format_table, write_report

    if args.breakdown_only:
        breakdown = run_breakdown(settings, progress=progress)
        print(format_breakdown(breakdown))
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        path = settings.output_dir / "breakdown.json"
        path.write_text(json.dumps({"machine": machine_info(), "breakdown_s": breakdown}, indent=2))
        print(f"\nresults: {path}")
        return EXIT_OK
    if args.prepare_only:
        print(prepare(settings, progress=progress)[1])
        return EXIT_OK
    report = run_benchmark(settings, command=command, progress=progress)
    print(format_table(report.comparisons))
    json_path, md_path = write_report(report, settings.output_dir)
    print(f"\nresults: {json_path}, {md_path}")
    return EXIT_OK


# -- serving -----------------------------------------------------------------------------------


def _add_serving(commands: Any) -> None:
    parser = _subcommand(
        commands,
        SERVING,
        "where the time of one request through the Triton ensemble goes, against a naive in-process run",
        "Latency of one rerank request through the cpu-profile Triton ensemble, split into "
        "tokenizer, model and ensemble/gRPC time, against the same pairs scored in-process "
        "(HF tokenizer + onnxruntime) in the same run.",
        _serving_settings,
        _run_serving,
    )
    defaults = ServingBenchSettings()
    parser.add_argument("--requests", type=int, default=defaults.requests, help="measured requests per system")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="warm-up requests per system")
    parser.add_argument("--documents", type=int, default=defaults.documents, help="candidates per request")
    parser.add_argument(
        "--document-tokens", type=int, default=defaults.document_tokens, help="passage tokens per candidate"
    )
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per pair")
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="reranker_model dynamic-batching delay; None: the project default",
    )
    parser.add_argument(
        "--tokenizer-instances", type=int, default=None, help="reranker_tokenizer instances; None: the project default"
    )
    parser.add_argument(
        "--length-buckets",
        type=int_list,
        default=None,
        help="comma-separated padding lengths of the tokenizer step; None: the project default",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="cross-encoder directory; None: build the tiny XLM-R test model"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the model, repository and server log here")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")


def _serving_settings(args: argparse.Namespace) -> ServingBenchSettings:
    settings = ServingBenchSettings(
        requests=args.requests,
        warmup=args.warmup,
        documents=args.documents,
        document_tokens=args.document_tokens,
        max_length=args.max_length,
        max_queue_delay_us=args.max_queue_delay_us,
        tokenizer_instances=args.tokenizer_instances,
        length_buckets=args.length_buckets,
        model_dir=args.model,
        work_dir=args.work_dir,
    )
    serving_settings(settings)  # the serving settings it asks for must be valid too
    return settings


def _run_serving(settings: ServingBenchSettings, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .reports import format_serving_report
    from .serving import run_serving_benchmark

    report = run_serving_benchmark(settings, command=command, progress=progress)
    print(format_serving_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return EXIT_OK


# -- client ------------------------------------------------------------------------------------


def _add_client(commands: Any) -> None:
    parser = _subcommand(
        commands,
        CLIENT,
        "the client's own cost per call; with --url, many requests in flight from one event loop",
        "Client-side cost of one rerank call (no server needed); with --url, also requests in flight "
        "from one event loop against a live server. Exits 1 when the cost misses its target.",
        _client_settings,
        _run_client,
    )
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--chars", type=int, default=1000, help="characters per document")
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--number", type=int, default=200, help="calls per timed batch")
    parser.add_argument("--url", help="live server: also measure requests in flight from one event loop")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=640, help="requests for the in-flight run")


def _client_settings(args: argparse.Namespace) -> None:
    for name in ("documents", "chars", "top_n", "repeats", "number", "concurrency", "requests"):
        if getattr(args, name) < 1:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")


def _run_client(_: None, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .client_cost import TARGET_US, client_side_cost, in_flight_runs
    from .machine import describe_machine, machine_info
    from .reports import format_client_cost, format_in_flight

    print(f"hardware: {describe_machine(machine_info())}", flush=True)
    print(f"client-side cost, {args.documents} documents x {args.chars} chars, top-{args.top_n}:", flush=True)
    timings = client_side_cost(args.documents, args.chars, args.top_n, repeats=args.repeats, number=args.number)
    print(format_client_cost(timings, top_n=args.top_n, documents=args.documents), flush=True)
    total = timings["total"].cpu_us
    missed = [f"client-side cost {total:.1f} µs is over the {TARGET_US:.0f} µs target"] if total > TARGET_US else []
    if args.url is not None:
        progress(f"in-flight runs against {args.url}: 1, then {args.concurrency} requests in flight")
        runs = in_flight_runs(
            args.url, concurrency=args.concurrency, requests=args.requests, documents=args.documents, chars=args.chars
        )
        print(format_in_flight(runs))
        if runs[-1].max_in_flight != args.concurrency:
            missed.append(f"at most {runs[-1].max_in_flight} requests were in flight, not {args.concurrency}")
    if missed:
        return _error("; ".join(missed), EXIT_FAILURE)
    return EXIT_OK


# -- reference-server --------------------------------------------------------------------------


def _add_reference(commands: Any) -> None:
    parser = _subcommand(
        commands,
        REFERENCE_SUBCOMMAND,
        "run the reference server: FastAPI POST /v1/rerank over FlagReranker, served by uvicorn",
        "Reference reranker (the seed recipe the comparison measures against): FastAPI POST /v1/rerank "
        "over FlagEmbedding's FlagReranker, served by uvicorn, until it is stopped.",
        _reference_settings,
        _run_reference,
    )
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: every core)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--scheduling",
        choices=[s.value for s in Scheduling],
        default=Scheduling.SERIAL.value,
        help="serial: one compute_score at a time; threadpool: concurrent calls in FastAPI's thread pool",
    )


def _reference_settings(args: argparse.Namespace) -> ReferenceSettings:
    settings = ReferenceSettings(
        model_dir=args.model,
        device=args.device,
        fp16=args.fp16,
        threads=args.threads,
        max_length=args.max_length,
        scheduling=Scheduling(args.scheduling),
    )
    settings.check()
    return settings


def _run_reference(settings: ReferenceSettings, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .reference import serve

    serve(settings, host=args.host, port=args.port)
    return EXIT_OK


# -- gpu-check (its options, settings and run live in reranker_bench.gpu_check) ----------------


def _add_gpu_check(commands: Any) -> None:
    from . import gpu_check

    parser = _subcommand(commands, GPU_CHECK, gpu_check.SUMMARY, gpu_check.SUMMARY, gpu_check.configure, gpu_check.run)
    gpu_check.add_arguments(parser)


# -- overload (its settings and run live in reranker_bench.overload) ---------------------------


def _add_overload(commands: Any) -> None:
    from .overload import DEFAULT_CLOSED_LOOP, OverloadSettings

    parser = _subcommand(
        commands,
        OVERLOAD,
        "goodput, latency, shedding and recovery at 0.5-4x capacity (open-loop Poisson arrivals)",
        "Start a local Triton (cpu profile, tiny test model) or use --triton-url, measure its capacity "
        "(closed loop), then offer open-loop Poisson arrivals at each level (a multiple of capacity) with a "
        "client deadline. Reports per level: goodput, p50/p95 of successes, shed %, deadline misses, what "
        "the server computed for callers that had gone, and recovery (a probe right after the load). "
        "--closed-loop adds callers that give up at their deadline and resend at once. Writes overload.json "
        "and overload.md; exits 1 with --check when a target is missed.",
        _overload_settings,
        _run_overload,
    )
    d = OverloadSettings()
    parser.add_argument("--levels", default="0.5,1,2,4", help="open-loop loads, multiples of capacity ('' for none)")
    parser.add_argument("--duration-s", type=float, default=d.level_duration_s, help="seconds per level")
    parser.add_argument("--deadline-s", type=float, default=d.deadline_s, help="client deadline of each request")
    parser.add_argument("--documents", type=int, default=d.documents, help="candidates per request")
    parser.add_argument(
        "--document-passages",
        type=int,
        default=d.document_passages,
        help="test-corpus sentences (10-30 tokens each) joined into one candidate",
    )
    parser.add_argument("--capacity-s", type=float, default=d.capacity_duration_s, help="seconds of the capacity run")
    parser.add_argument("--capacity-callers", type=int, default=d.capacity_callers, help="callers of the capacity run")
    parser.add_argument("--capacity", type=float, default=None, help="use this capacity (req/s) instead of measuring")
    parser.add_argument(
        "--closed-loop",
        default="",
        metavar="CALLERS:DEADLINE_S,...",
        help=f"closed-loop callers that give up at their deadline, e.g. {DEFAULT_CLOSED_LOOP} (the issue's table)",
    )
    parser.add_argument(
        "--probe-timeout-s", type=float, default=d.probe_timeout_s, help="timeout of each recovery request"
    )
    parser.add_argument(
        "--drain-timeout-s", type=float, default=d.drain_timeout_s, help="longest wait for the backlog after a level"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the arrival times")
    parser.add_argument(
        "--client-throttle",
        action=argparse.BooleanOptionalAction,
        default=d.client_throttle,
        help="the client's adaptive throttling (RetryPolicy.throttle); --no-client-throttle sends every attempt",
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="cross-encoder directory; None: build the tiny XLM-R test model"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the model, repository and server log here")
    parser.add_argument("--triton-url", default=None, help="measure this running Triton (host:port) instead")
    parser.add_argument("--metrics-url", default=None, help="with --triton-url: its http://host:port/metrics")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("bench-results"), help="overload.json and overload.md go here"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when one of the issue's targets is missed")


def _overload_settings(args: argparse.Namespace) -> Any:
    from .overload import CallerCase, OverloadSettings, parse_levels

    return OverloadSettings(
        levels=parse_levels(args.levels),
        level_duration_s=args.duration_s,
        deadline_s=args.deadline_s,
        documents=args.documents,
        document_passages=args.document_passages,
        capacity_duration_s=args.capacity_s,
        capacity_callers=args.capacity_callers,
        capacity_per_s=args.capacity,
        closed_loop=CallerCase.parse_list(args.closed_loop),
        probe_timeout_s=args.probe_timeout_s,
        drain_timeout_s=args.drain_timeout_s,
        seed=args.seed,
        client_throttle=args.client_throttle,
        model_dir=args.model,
        work_dir=args.work_dir,
        triton_url=args.triton_url,
        metrics_url=args.metrics_url,
    )


def _run_overload(settings: Any, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .overload import run_overload_benchmark
    from .overload_report import format_markdown

    report = run_overload_benchmark(settings, command=command, progress=progress)
    print(format_markdown(report))
    json_path, md_path = report.write(args.output_dir)
    print(f"\nresults: {json_path}, {md_path}")
    missed = [f"{t.level}: {t.target} (observed {t.observed})" for t in report.targets if not t.passed]
    if args.check and missed:
        return _error("missed: " + "; ".join(missed), EXIT_FAILURE)
    return EXIT_OK


# -- gateway ---------------------------------------------------------------------------------


def _add_gateway(commands: Any) -> None:
    parser = _subcommand(
        commands,
        GATEWAY,
        "the HTTP gateway's overhead: the same reranks through reranker-gateway and straight over gRPC",
        "Send the same reranks straight to Triton (gRPC, AsyncRerankerClient) and through reranker-gateway "
        "(HTTP POST /v1/rerank), alternating in rounds on one server. Reports p50/p95, requests/s and the "
        "gateway's CPU per request; exits 1 when it misses a target (<= 1 ms added p50, <= 5% throughput "
        "lost at the highest concurrency).",
        _gateway_settings,
        _run_gateway,
    )
    parser.add_argument("--concurrency", type=int_list, default=(1, 16), help="comma-separated levels (default: 1,16)")
    parser.add_argument("--requests", type=int, default=200, help="measured requests per level and path")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two paths per level")
    parser.add_argument("--warmup", type=int, default=16, help="warm-up requests per path")
    parser.add_argument("--candidates", type=int, default=50, help="documents per request")
    parser.add_argument("--document-words", default="normal:100-300", help="passage length in words: KIND:LOW-HIGH")
    parser.add_argument("--top-n", type=int, default=5)
    parser.add_argument("--triton-url", default=None, help="use this running Triton (host:port)")
    parser.add_argument(
        "--repository", type=Path, default=None, help="serve this cpu repository (default: the tiny test model's)"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("bench-work/gateway"), help="model, repository, logs")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")


def _gateway_settings(args: argparse.Namespace) -> Any:
    from .gateway import GatewayBenchSettings

    return GatewayBenchSettings(
        concurrency=args.concurrency,
        requests=args.requests,
        rounds=args.rounds,
        warmup=args.warmup,
        candidates=args.candidates,
        document_words=args.document_words,
        top_n=args.top_n,
        triton_url=args.triton_url,
        repository=args.repository,
        work_dir=args.work_dir,
    )


def _run_gateway(settings: Any, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .gateway import format_gateway_report, run_gateway_benchmark
    from .machine import describe_machine

    report = run_gateway_benchmark(settings, command=command, progress=progress)
    print(f"hardware: {describe_machine(report.machine)}")
    print(format_gateway_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return EXIT_FAILURE if report.missed() else EXIT_OK


# -- heal --------------------------------------------------------------------------------------


def _add_heal(commands: Any) -> None:
    parser = _subcommand(
        commands,
        HEAL,
        "the stub-kill experiment: detection and recovery by reranker-serve's self-healing",
        "Start --replicas reranker-serve processes (default healing) on a cpu-profile repository, load "
        "them through one client (default retries, round-robin) at --load-share of their capacity, "
        "SIGKILL the python stubs of the first replica and measure, from the kill: the first failed "
        "direct probe, the supervisor's detection and recovery, the first passing probe, and the "
        "client-visible failures. Writes heal.json, the server logs and reranker-serve's logs to --output-dir.",
        _heal_settings,
        _run_heal,
    )
    parser.add_argument("--repository", type=Path, required=True, help="a cpu-profile model repository")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--load-share", type=float, default=0.5, help="offered load / measured capacity")
    parser.add_argument("--output-dir", type=Path, default=Path("heal-results"))


def _heal_settings(args: argparse.Namespace) -> Any:
    from .heal import HealSettings

    settings = HealSettings(
        repository=args.repository,
        replicas=args.replicas,
        trials=args.trials,
        load_share=args.load_share,
        output_dir=args.output_dir,
    )
    settings.check()
    return settings


def _run_heal(settings: Any, args: argparse.Namespace, command: str, progress: Progress) -> int:
    from .heal import format_report, run
    from .machine import describe_machine

    report = run(settings, progress)
    print(f"hardware: {describe_machine(report['machine'])}\ncommand: {command}\n{format_report(report)}")
    if not report["healed_within_30s"]:
        return _error("a replica was not serving again within 30 s of the kill", EXIT_FAILURE)
    return EXIT_OK


# -- precision (its options, settings and run live in reranker_bench.precision) ----------------


def _add_precision(commands: Any) -> None:
    from . import precision

    parser = _subcommand(
        commands, PRECISION, precision.SUMMARY, precision.__doc__ or "", precision.configure, precision.run
    )
    precision.add_arguments(parser)


# -- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmarks of this deployment. Without a subcommand, runs compare: "
        f"'{PROG} [compare options]' is '{PROG} {COMPARE} [compare options]'.",
        epilog=f"'{PROG} COMMAND --help' lists a subcommand's options. "
        "Exit codes: 0 done, 1 failed, 2 usage error, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_compare(commands)
    _add_serving(commands)
    _add_client(commands)
    _add_reference(commands)
    _add_gpu_check(commands)
    _add_gateway(commands)
    _add_heal(commands)
    _add_overload(commands)
    _add_precision(commands)
    return parser


def _error(message: str, code: int) -> int:
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    typed = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(with_default_command(typed))  # usage errors exit 2 here
    try:
        try:
            settings = args.configure(args)
        except (BenchmarkError, LoadtestError, ValueError) as exc:
            return _error(str(exc), EXIT_USAGE)
        return int(args.run(settings, args, " ".join([PROG, *typed]), progress_printer()))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BenchmarkError, LoadtestError) as exc:
        return _error(str(exc), EXIT_FAILURE)
    except Exception as exc:  # a failure of a system under test (gRPC, HTTP, files): one line, no traceback
        return _error(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)


if __name__ == "__main__":
    raise SystemExit(main())
