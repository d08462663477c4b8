"""``reranker-eval``: ranking quality of reranker deployments on your own data.

reranker-eval --test-set --deployment localhost:8001
reranker-eval --dataset beir/scifact --run bm25.trec --deployment fp32=gpu-a:8001 --deployment int8=gpu-b:8001 \\
    --output report.json --markdown report.md
reranker-eval --dataset my-queries.jsonl --deployment localhost:8001
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from reranker_client import RerankerError
from reranker_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, progress_printer

from .dataset import DEFAULT_DEPTH, EvalSet, load_dataset, test_set
from .deployments import Deployment, DeploymentSpec, open_deployment, parse_deployment
from .errors import DatasetError, DeploymentError, ScoringError
from .evaluate import FIRST_STAGE, check_measurable, evaluate, ndcg_gate
from .report import to_json, to_markdown

PROG = "reranker-eval"


class UsageError(Exception):
    """A problem with the command line (one line, exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Measure ranking quality (nDCG@10, Recall@1/3/5/10, MRR@10) of the first-stage order and of "
        "each reranker deployment on a dataset, and how the deployments agree (top-k overlap, Kendall tau). "
        "The Markdown report goes to stdout, progress to stderr.",
        epilog="Formats and the report: docs/eval.md. Exit status: 0 done, 1 a deployment failed or the "
        "--max-ndcg-drop gate was missed, 2 bad input.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset",
        type=Path,
        metavar="PATH",
        help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or a .jsonl file of "
        "{query, candidates} lines",
    )
    source.add_argument(
        "--test-set",
        action="store_true",
        help="the shipped multilingual set (48 queries, 6 languages), for the project's test model",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        required=True,
        metavar="[NAME=]ADDRESS",
        help="a reranker to evaluate: Triton's gRPC address, HOST:PORT, grpc://HOST:PORT or dns:///HOST:PORT; "
        "repeat to compare (the first is the reference for agreement)",
    )
    parser.add_argument(
        "--run",
        type=Path,
        metavar="FILE",
        help="BEIR only: the first-stage run, a TREC run file or a .jsonl of {query_id, doc_ids} "
        "(default: run.trec or candidates.jsonl in the dataset folder)",
    )
    parser.add_argument(
        "--split", default="test", metavar="NAME", help="BEIR only: the qrels split (default: %(default)s)"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=DEFAULT_DEPTH,
        metavar="N",
        help="BEIR only: candidates per query taken from the run (default: %(default)s)",
    )
    parser.add_argument(
        "--model", default="reranker", metavar="NAME", help="the ensemble's name (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="deadline of one query's scoring, seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for each deployment to be ready before starting (default: %(default)s)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="queries in flight at once (default: %(default)s)")
    parser.add_argument(
        "--agreement-k", type=int, default=5, metavar="K", help="the k of the top-k overlap (default: %(default)s)"
    )
    parser.add_argument(
        "--max-ndcg-drop",
        type=float,
        metavar="X",
        help="a gate: exit 1 when a deployment's nDCG@10 is more than X below the first deployment's "
        "(e.g. 0.01 for INT8 against FP32); the reports are written either way",
    )
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the JSON report here")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write the Markdown report here instead of stdout"
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for flag, value in (("--concurrency", args.concurrency), ("--agreement-k", args.agreement_k)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.depth < 1:
        raise UsageError(f"--depth must be at least 1, got {args.depth}")
    if args.timeout <= 0 or args.wait < 0:
        raise UsageError("--timeout must be positive and --wait not negative")
    if args.max_ndcg_drop is not None and (args.max_ndcg_drop < 0 or len(args.deployment) < 2):
        raise UsageError(
            "--max-ndcg-drop needs a non-negative X and two deployments or more (the first is the reference)"
        )
    for flag, path in (("--output", args.output), ("--markdown", args.markdown)):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
    if args.test_set and (args.run is not None or args.split != "test"):
        raise UsageError("--run and --split belong to --dataset; the test set brings its own")


def _dataset(args: argparse.Namespace) -> EvalSet:
    if args.test_set:
        return test_set(depth=args.depth)
    return load_dataset(args.dataset, run=args.run, split=args.split, depth=args.depth)


def _specs(args: argparse.Namespace) -> list[DeploymentSpec]:
    specs = [parse_deployment(spec, model=args.model) for spec in args.deployment]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"two deployments are called {duplicates[0]!r}: name them, NAME=ADDRESS")
    if FIRST_STAGE in names:
        raise UsageError(f"{FIRST_STAGE!r} is the first stage's name in the report: call the deployment otherwise")
    return specs


@contextlib.contextmanager
def _opened(specs: Sequence[DeploymentSpec], timeout: float) -> Iterator[list[Deployment]]:
    opened: list[Deployment] = []
    try:
        for spec in specs:
            opened.append(open_deployment(spec, timeout=timeout))
        yield opened
    finally:
        for deployment in opened:
            deployment.close()


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    specs = _specs(args)
    say = progress_printer()
    dataset = _dataset(args)
    say(f"{dataset.name}: {len(dataset)} queries ({dataset.judged} with a relevant document), {dataset.format} layout")
    for note in dataset.notes:
        say(f"note: {note}")
    check_measurable(dataset, len(specs))  # before any server is called
    with _opened(specs, args.timeout) as deployments:
        for deployment in deployments:
            try:
                deployment.wait_until_ready(args.wait)
            except RerankerError as exc:
                raise ScoringError(
                    f"deployment {deployment.name!r} ({deployment.address}) is not ready: {exc}"
                ) from exc
        report = evaluate(
            dataset, deployments, concurrency=args.concurrency, agreement_k=args.agreement_k, progress=say
        )
    markdown = to_markdown(report)
    if args.output is not None:
        args.output.write_text(to_json(report), encoding="utf-8")
        say(f"JSON report: {args.output}")
    if args.markdown is not None:
        args.markdown.write_text(markdown, encoding="utf-8")
        say(f"Markdown report: {args.markdown}")
    else:
        sys.stdout.write(markdown)
    if args.max_ndcg_drop is not None:
        failures = ndcg_gate(report, args.max_ndcg_drop)
        for line in failures:
            print(f"{PROG}: gate missed: {line}", file=sys.stderr)
        if failures:
            return EXIT_FAILURE
        say(f"gate passed: no deployment is more than {args.max_ndcg_drop} nDCG@10 below {report.systems[1].name}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, DatasetError, DeploymentError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ScoringError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
