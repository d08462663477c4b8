"""``reranker-bench``: every benchmark of the project behind one command.

    reranker-bench [compare] [OPTIONS]     this deployment vs the reference stack (the default)
    reranker-bench serving [OPTIONS]       where the time of one request goes, against a naive run
    reranker-bench client [OPTIONS]        the client's own cost, and requests in flight
    reranker-bench reference-server ...    run the reference server (FastAPI + FlagReranker) alone
    reranker-bench gpu-check [OPTIONS]     one prepared run on a CUDA GPU machine (see reranker_bench.gpu_check)
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
COMPARE, SERVING, CLIENT, GPU_CHECK, PRECISION = "compare", "serving", "client", "gpu-check", "precision"
COMMANDS = (COMPARE, SERVING, CLIENT, REFERENCE_SUBCOMMAND, GPU_CHECK, PRECISION)
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
        name, help=summary, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
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
    parser.add_argument("--concurrency", type=int_list, default=(1, 4, 16), help="comma-separated levels")
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
