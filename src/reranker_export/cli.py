"""``reranker-export``: a thin CLI over :func:`reranker_export.pipeline.export_model`.

reranker-export --model BAAI/bge-reranker-v2-m3 --profile tensorrt --output repo/
reranker-export --model DIR --onnx DIR/onnx/model.onnx --profile cpu --output repo/   (bring your own ONNX)
reranker-export render --profile tensorrt --output model_repository/   (configs and code, no weights)
reranker-export make-test-model DIR [--kind xlm-roberta|bert]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reranker_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, int_list, progress_printer

from . import validation
from .errors import ExportError
from .loading import HUB_TIMEOUT_S
from .settings import (
    DEFAULT_MODEL_ID,
    Overflow,
    PairSemantics,
    Precision,
    Profile,
    QueueSettings,
    ServingSettings,
    TokenizerSettings,
)

PROG = "reranker-export"


def _add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServingSettings()
    tok = TokenizerSettings()
    group = parser.add_argument_group("serving settings (rendered into config.pbtxt)")
    group.add_argument(
        "--profile",
        type=Profile,
        choices=list(Profile),
        default=defaults.profile,
        help="where reranker_model runs (default: %(default)s)",
    )
    group.add_argument(
        "--max-length",
        type=int,
        default=tok.max_length,
        help="tokens per (query, passage) pair (default: %(default)s)",
    )
    group.add_argument(
        "--pair-semantics",
        type=PairSemantics,
        choices=list(PairSemantics),
        default=None,
        help="how a pair is cut to max_length: flag (FlagReranker, BGE) or longest_first (sentence-transformers "
        "CrossEncoder, TEI, Jina v2); default: chosen from the model (docs/families.md), flag for 'render'",
    )
    group.add_argument(
        "--query-max-length",
        type=int,
        default=None,
        help="flag semantics: query tokens kept (default: max_length * 3 // 4)",
    )
    group.add_argument(
        "--overflow",
        type=Overflow,
        choices=list(Overflow),
        default=tok.overflow,
        help="long passages: truncate (FlagReranker parity) or score windows (default: %(default)s)",
    )
    group.add_argument(
        "--window-stride",
        type=int,
        default=tok.window_stride,
        help="window mode: tokens between window starts (default: %(default)s)",
    )
    group.add_argument(
        "--length-buckets",
        type=int_list,
        default=tok.length_buckets,
        help="comma-separated padding lengths (default: %(default)s)",
    )
    group.add_argument(
        "--max-documents",
        type=int,
        default=tok.max_documents,
        help="documents per request (default: %(default)s)",
    )
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults.max_batch_size,
        help="rows per model execution (default: %(default)s)",
    )
    group.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=defaults.max_queue_delay_us,
        help="dynamic batching delay (default: %(default)s)",
    )
    group.add_argument(
        "--max-queue-size",
        type=int,
        default=defaults.queue.max_queue_size,
        help="requests each step queues before refusing more at once with UNAVAILABLE; 0 = unbounded "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--queue-timeout-ms",
        type=float,
        default=defaults.queue.timeout_us / 1000,
        help="longest wait in a step's queue before the request is rejected (UNAVAILABLE); callers' "
        "deadlines shorten it (default: %(default)s)",
    )
    group.add_argument("--tokenizer-instances", type=int, default=defaults.tokenizer_instances)
    group.add_argument("--model-instances", type=int, default=defaults.model_instances)
    group.add_argument(
        "--precision",
        type=Precision,
        choices=list(Precision),
        default=defaults.precision,
        help="GPU profiles: fp16 or fp32; cpu profile: fp32 (any other value) or int8, a fused graph with "
        "dynamic INT8 weights gated by ranking agreement with FP32 (default: %(default)s)",
    )
    group.add_argument(
        "--graph-fusion",
        action="store_true",
        help="cpu profile: serve onnxruntime's fused transformer graph in FP32 (int8 always fuses)",
    )
    group.add_argument(
        "--ort-threads",
        type=int,
        default=defaults.ort_intra_op_threads,
        help="cpu profile: onnxruntime intra-op threads, 0 = all cores (default: %(default)s)",
    )
    group.add_argument(
        "--cpu-sub-batch-rows",
        type=int,
        default=defaults.cpu_sub_batch_rows,
        help="cpu profile: rows per onnxruntime run, sorted by length; 0 = whole batch (default: %(default)s)",
    )


def _serving_settings(args: argparse.Namespace) -> ServingSettings:
    return ServingSettings(
        profile=args.profile,
        tokenizer=TokenizerSettings(
            max_length=args.max_length,
            pair_semantics=args.pair_semantics,
            query_max_length=args.query_max_length,
            overflow=args.overflow,
            window_stride=args.window_stride,
            length_buckets=args.length_buckets,
            max_documents=args.max_documents,
        ),
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        queue=QueueSettings(max_queue_size=args.max_queue_size, timeout_us=round(args.queue_timeout_ms * 1000)),
        tokenizer_instances=args.tokenizer_instances,
        model_instances=args.model_instances,
        precision=args.precision,
        graph_fusion=args.graph_fusion,
        ort_intra_op_threads=args.ort_threads,
        cpu_sub_batch_rows=args.cpu_sub_batch_rows,
    )


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a Hugging Face cross-encoder to validated ONNX and a Triton model repository. "
        "Other commands: 'reranker-export render --help', 'reranker-export make-test-model --help'.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="hub id or local directory (default: %(default)s)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--hub-timeout",
        type=float,
        default=HUB_TIMEOUT_S,
        metavar="S",
        help="seconds each Hugging Face hub call may take before the export fails (default: %(default)s)",
    )
    parser.add_argument("--output", type=Path, required=True, help="model repository directory to write")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output repository")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the modeling code a model ships (auto_map in its config.json, e.g. Jina v2); read it first",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve this existing ONNX export (inputs input_ids, attention_mask[, token_type_ids]; one logit per "
        "row) instead of exporting; --model gives its tokenizer and the PyTorch model to check it against",
    )
    parser.add_argument(
        "--skip-parity",
        action="store_true",
        help="with --onnx: do not compare it with the PyTorch model (which then need not load); "
        "the manifest records the skip",
    )
    parser.add_argument(
        "--fp32-tolerance",
        type=float,
        default=1e-4,
        help="max |logit difference| ONNX Runtime vs PyTorch (default: %(default)s)",
    )
    parser.add_argument(
        "--fp16-tolerance",
        type=float,
        default=5e-2,
        help="max |logit difference| FP16 vs FP32 (default: %(default)s)",
    )
    parser.add_argument(
        "--int8-min-top5",
        type=float,
        default=validation.INT8_MIN_TOP5_OVERLAP,
        help="int8: least mean top-5 overlap with FP32's rankings (default: %(default)s)",
    )
    parser.add_argument(
        "--int8-min-tau",
        type=float,
        default=validation.INT8_MIN_KENDALL_TAU,
        help="int8: least mean Kendall tau with FP32's rankings (default: %(default)s)",
    )
    parser.add_argument(
        "--agreement-file",
        type=Path,
        default=None,
        metavar="JSONL",
        help='int8: also gate on your own data, lines of {"query": ..., "candidates": [...]}',
    )
    _add_serving_arguments(parser)
    return parser


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} render",
        description="Render configs and python-model code of a repository without weights "
        "(what model_repository/ in git holds).",
    )
    parser.add_argument("--output", type=Path, required=True)
    _add_serving_arguments(parser)
    return parser


def _test_model_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} make-test-model",
        description="Build a tiny trained cross-encoder with its own tokenizer, offline, in seconds.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--kind", default="xlm-roberta", choices=["xlm-roberta", "bert"])
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _run(argv: list[str]) -> int:
    say = progress_printer()
    if argv and argv[0] == "make-test-model":
        args = _test_model_parser().parse_args(argv[1:])
        from .testmodels import TestModelKind, build_test_model

        path = build_test_model(args.directory, kind=TestModelKind(args.kind), seed=args.seed, progress=say)
        print(path)
        return 0
    if argv and argv[0] == "render":
        args = _render_parser().parse_args(argv[1:])
        from .repository import render_repository

        print(render_repository(args.output, _serving_settings(args)))
        return 0

    parser = _export_parser()
    args = parser.parse_args(argv)
    try:
        serving = _serving_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    from .pipeline import ExportSettings, export_model

    result = export_model(
        ExportSettings(
            model=args.model,
            revision=args.revision,
            hub_timeout_s=args.hub_timeout,
            output=args.output,
            serving=serving,
            fp32_tolerance=args.fp32_tolerance,
            fp16_tolerance=args.fp16_tolerance,
            force=args.force,
            trust_remote_code=args.trust_remote_code,
            onnx=args.onnx,
            skip_parity=args.skip_parity,
            int8_min_top5_overlap=args.int8_min_top5,
            int8_min_kendall_tau=args.int8_min_tau,
            agreement_file=args.agreement_file,
        ),
        progress=say,
    )
    print(result.repository)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except ExportError as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:  # settings that cannot hold together
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
