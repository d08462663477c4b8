"""``gpu-check``: one prepared run on a CUDA machine that exports, checks FP16 and measures serving.

    python -m reranker_bench.gpu_check [OUTPUT_DIR] [OPTIONS]     (what scripts/gpu-check.sh runs)
    reranker-bench gpu-check [OUTPUT_DIR] [OPTIONS]                (the same, where the bench extra is installed)

Stages, each recorded in the report (ok, failed or skipped) and the report rewritten after each,
so a run cut short still leaves its results:

1. hardware and installed modules;
2. tokenizer: trained offline on workload text (``reranker_bench.models.train_bench_tokenizer``);
3. model: the full-size bge-reranker-v2-m3 architecture (vocabulary 250,002) with random weights;
4. FP16 check on the GPU in PyTorch (``half()`` against ``float()``; onnxruntime there is CPU-only),
   with the export's metrics on its probe set (``reranker_export.validation.check_fp16``);
5. serving: 50 candidates at 64/128/256/512 tokens per pair, c=1 latency and saturation at c=8
   and c=16, through the ``reranker`` ensemble (``triton-ensemble``: tritonserver from the
   nvidia-pytriton wheel, a ``cpu``-profile repository whose ``reranker_model`` is the PyTorch
   FP16 step of ``reranker_bench.torch_step_model``) or, when that cannot run, in-process
   (``in-process-fallback``: the tokenizer step's ``PairEncoder`` and the same FP16 model);
6. export to ONNX FP32, then FP16 conversion (CPU; last, so the GPU figures come first).

``--dry-run`` runs the same stages on the CPU with a tiny architecture in seconds: no GPU
figures, serving only with ``--measure``. Without ``--dry-run`` and without a CUDA GPU it exits 2.
Results: ``OUTPUT_DIR/gpu-check.json``, ``gpu-check.md``, ``gpu-check.log`` (and
``tritonserver.log``). Exit codes: 0 every stage passed, 1 a stage failed or a check missed its
tolerance (the report says which), 2 usage error or no GPU, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from reranker_common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Progress,
    int_list,
    progress_printer,
)

from .errors import BenchmarkError
from .gpu_check_serving import MeasurePlan

PROG = "gpu-check"
SUMMARY = "one prepared run on a CUDA GPU machine: export, FP16 check, serving latency (--dry-run: CPU)"
DRY_RUN = "dry-run"
DEFAULT_OUTPUT_DIR = Path("gpu-check-results")
MAX_PAIR_TOKENS = 512
DESCRIPTION = __doc__.split("\n\n", 2)[2] if __doc__ else SUMMARY


class Runtime(str, Enum):
    """Which pipeline the serving stage measures."""

    AUTO = "auto"
    TRITON = "triton-ensemble"
    IN_PROCESS = "in-process-fallback"


GPU_PLAN = MeasurePlan(
    lengths=(64, 128, 256, 512),
    concurrency=(8, 16),
    latency_requests=40,
    saturation_requests=160,
    level_seconds=10.0,
    warmup_requests=3,
    budget_s=200.0,
)
DRY_RUN_PLAN = MeasurePlan(
    lengths=(64, 128),
    concurrency=(2,),
    latency_requests=3,
    saturation_requests=4,
    level_seconds=5.0,
    warmup_requests=1,
    budget_s=60.0,
)


@dataclass(frozen=True, kw_only=True)
class GpuCheckSettings:
    output_dir: Path
    dry_run: bool = False
    runtime: Runtime = Runtime.AUTO
    measure: bool = True
    export: bool = True
    onnx_check: bool = False
    """ONNX Runtime (CPU) checks of the exported graphs; always on in the dry run."""
    plan: MeasurePlan = GPU_PLAN
    candidates: int = 50
    distinct_requests: int = 16
    """Different requests per length, cycled through by the levels."""
    work_dir: Path | None = None
    """Model, tokenizer, graphs and repository; ``None``: a temporary folder, removed at the end."""
    seed: int = 0
    tokenizer_instances: int = 4
    startup_timeout_s: float = 120.0
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        plan = self.plan
        if not plan.lengths or any(not 16 <= n <= MAX_PAIR_TOKENS for n in plan.lengths):
            raise BenchmarkError(f"--lengths must lie in 16..{MAX_PAIR_TOKENS} tokens per pair, got {plan.lengths}")
        if any(c < 2 for c in plan.concurrency):
            raise BenchmarkError(
                f"--concurrency lists saturation levels above 1 (c=1 always runs), got {plan.concurrency}"
            )
        if not 1 <= self.candidates <= 64:
            raise BenchmarkError(f"--candidates must be in 1..64 (one request's pairs), got {self.candidates}")
        for name in ("latency_requests", "saturation_requests"):
            if getattr(plan, name) < 1:
                raise BenchmarkError(f"--{name.replace('_', '-')} must be positive, got {getattr(plan, name)}")
        if plan.warmup_requests < 0 or plan.level_seconds <= 0 or plan.budget_s <= 0:
            raise BenchmarkError("--warmup-requests must be >= 0, --level-seconds and --measure-budget-s positive")
        if self.distinct_requests < 1 or self.tokenizer_instances < 1:
            raise BenchmarkError("--distinct-requests and --tokenizer-instances must be positive")

    @property
    def mode(self) -> str:
        return DRY_RUN if self.dry_run else "gpu"

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def default_output_dir() -> Path:
    """``$OUT`` when set (the GPU machine's results folder), else ``./gpu-check-results``."""
    out = os.environ.get("OUT", "").strip()
    return Path(out) if out else DEFAULT_OUTPUT_DIR


# -- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's options on ``parser`` (its own, or ``reranker-bench``'s subcommand), with its description."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the defaults are in the help texts
    g, d = GPU_PLAN, DRY_RUN_PLAN
    parser.add_argument(
        "output_dir",
        nargs="?",
        type=Path,
        default=None,
        metavar="OUTPUT_DIR",
        help=f"results folder (default: $OUT if set, else ./{DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny architecture: the stages in seconds")
    parser.add_argument(
        "--runtime",
        choices=[r.value for r in Runtime],
        default=Runtime.AUTO.value,
        help="auto: triton-ensemble when nvidia-pytriton and tritonclient are importable and the server starts, "
        "else in-process-fallback (dry run: in-process)",
    )
    parser.add_argument("--measure", action="store_true", help="dry run: also run the serving stage (on the CPU)")
    parser.add_argument("--skip-measure", action="store_true", help="no serving stage")
    parser.add_argument("--skip-export", action="store_true", help="no ONNX export or FP16 conversion")
    parser.add_argument(
        "--onnx-check", action="store_true", help="also check the graphs in ONNX Runtime (CPU; slow at full size)"
    )
    parser.add_argument(
        "--lengths",
        type=int_list,
        default=None,
        help=f"tokens per pair (default {_csv(g.lengths)}; dry run {_csv(d.lengths)})",
    )
    parser.add_argument(
        "--concurrency",
        type=int_list,
        default=None,
        help=f"saturation levels (default {_csv(g.concurrency)}; dry run {_csv(d.concurrency)})",
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=None,
        help=f"c=1 requests per length, at most (default {g.latency_requests}; dry run {d.latency_requests})",
    )
    parser.add_argument(
        "--saturation-requests",
        type=int,
        default=None,
        help=f"requests per saturation level, at most (default {g.saturation_requests}; "
        f"dry run {d.saturation_requests})",
    )
    parser.add_argument(
        "--level-seconds",
        type=float,
        default=None,
        help=f"wall time per level, at most (default {g.level_seconds:g}; dry run {d.level_seconds:g})",
    )
    parser.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help=f"unmeasured c=1 requests per length (default {g.warmup_requests}; dry run {d.warmup_requests})",
    )
    parser.add_argument(
        "--measure-budget-s",
        type=float,
        default=None,
        help=f"wall time of all levels together (default {g.budget_s:g}; dry run {d.budget_s:g})",
    )
    parser.add_argument("--candidates", type=int, default=50, help="passages per request")
    parser.add_argument(
        "--distinct-requests", type=int, default=None, help="different requests per length (default 16; dry run 4)"
    )
    parser.add_argument(
        "--tokenizer-instances", type=int, default=None, help="reranker_tokenizer instances (default min(4, cores))"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep model, graphs and repository here (default: a temporary folder, removed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and the requests")
    parser.add_argument("--startup-timeout-s", type=float, default=120.0, help="tritonserver start, at most")


def _csv(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _check_gpu() -> None:
    try:
        import torch
    except ImportError:
        raise BenchmarkError(
            "PyTorch is not installed; the GPU check needs torch with CUDA (--dry-run needs torch too)"
        ) from None
    if not torch.cuda.is_available():
        raise BenchmarkError(
            "no CUDA GPU is visible (torch.cuda.is_available() is False); the GPU check needs one, "
            "--dry-run runs its stages on the CPU"
        )


def configure(args: argparse.Namespace) -> GpuCheckSettings:
    """Settings from the parsed arguments; ``BenchmarkError`` for a usage error or when no GPU is visible."""
    base = DRY_RUN_PLAN if args.dry_run else GPU_PLAN
    overrides = {
        "lengths": args.lengths,
        "concurrency": args.concurrency,
        "latency_requests": args.latency_requests,
        "saturation_requests": args.saturation_requests,
        "level_seconds": args.level_seconds,
        "warmup_requests": args.warmup_requests,
        "budget_s": args.measure_budget_s,
    }
    plan = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if args.measure and args.skip_measure:
        raise BenchmarkError("--measure and --skip-measure contradict each other")
    settings = GpuCheckSettings(
        output_dir=args.output_dir if args.output_dir is not None else default_output_dir(),
        dry_run=args.dry_run,
        runtime=Runtime(args.runtime),
        measure=not args.skip_measure and (args.measure or not args.dry_run),
        export=not args.skip_export,
        onnx_check=args.onnx_check or args.dry_run,
        plan=plan,
        candidates=args.candidates,
        distinct_requests=args.distinct_requests or (4 if args.dry_run else 16),
        work_dir=args.work_dir,
        seed=args.seed,
        tokenizer_instances=args.tokenizer_instances or min(4, os.cpu_count() or 1),
        startup_timeout_s=args.startup_timeout_s,
    )
    if not settings.dry_run:
        _check_gpu()
    return settings


def run(settings: GpuCheckSettings, args: argparse.Namespace, command: str, progress: Progress) -> int:
    """Run the check; print where the results are; the exit code says whether every stage passed."""
    from .gpu_check_run import run_gpu_check

    report, code = run_gpu_check(settings, command=command, progress=progress)
    print(f"runtime: {report['runtime']}" + (f" ({report['runtime_reason']})" if report.get("runtime_reason") else ""))
    for problem in report["problems"]:
        print(f"problem: {problem}")
    print(f"results: {settings.output_dir / 'gpu-check.json'}, {settings.output_dir / 'gpu-check.md'}")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reranker_bench.gpu_check")
    add_arguments(parser)
    return parser


def _error(message: str, code: int) -> int:
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    typed = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(typed)  # usage errors exit 2 here
    try:
        try:
            settings = configure(args)
        except (BenchmarkError, ValueError) as exc:
            return _error(str(exc), EXIT_USAGE)
        return run(settings, args, " ".join(["python -m reranker_bench.gpu_check", *typed]), progress_printer())
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a failure outside the stages (which record their own): one line
        return _error(f"{type(exc).__name__}: {exc}", EXIT_FAILURE)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the other modules of the check
    # import their enums and settings from reranker_bench.gpu_check, and identity checks need one copy.
    from reranker_bench.gpu_check import main as _main

    raise SystemExit(_main())
