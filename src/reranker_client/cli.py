"""``reranker-client``: rank documents against a running reranker from the command line.

reranker-client rank --url localhost:8001 --query "what is a panda?" --documents-file passages.txt --top-n 5
reranker-client rank --url localhost:8001 --query "q" "first passage" "second passage" --json
reranker-client health --url localhost:8001
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ENSEMBLE_NAME, Compression, TLSConfig
from .errors import RerankerError
from .ranking import RerankResult
from .sync_client import RerankerClient

URL_ENV = "RERANKER_URL"


class UsageError(Exception):
    """A problem with the command line or its input files (one line, exit status 2)."""


def read_documents(path: str) -> list[str]:
    """Documents from a file: a JSON array of strings (``.json``) or one document per line.

    ``-`` reads standard input. Blank lines are skipped.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read documents file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"documents file {path} is not UTF-8 text: {exc}") from exc
    if path.endswith(".json"):
        try:
            documents = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"documents file {path} is not valid JSON: {exc}") from exc
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise UsageError(f"documents file {path} must hold a JSON array of strings")
        return documents
    return [line for line in text.splitlines() if line.strip()]


def format_table(results: Sequence[RerankResult], documents: Sequence[str], *, width: int) -> str:
    """Rank, input index, score and the start of each document, one row per result."""
    header = f"{'rank':>4}  {'index':>5}  {'score':>10}  document"
    lines = [header, "-" * min(len(header) + 20, width)]
    room = max(width - 29, 20)
    for position, result in enumerate(results, start=1):
        text = " ".join(documents[result.index].split())
        if len(text) > room:
            text = text[: room - 1] + "…"
        lines.append(f"{position:>4}  {result.index:>5}  {result.score:>10.4f}  {text}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker-client",
        description="Call a reranker served by Triton: rank documents for a query, or check health.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_connection(sub: argparse.ArgumentParser) -> None:
        default_url = os.environ.get(URL_ENV)
        sub.add_argument(
            "--url",
            default=default_url,
            required=default_url is None,
            help=f"gRPC target, host:port or dns:///host:port (default: ${URL_ENV})",
        )
        sub.add_argument("--model", default=ENSEMBLE_NAME, help="ensemble name (default: %(default)s)")
        sub.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default: %(default)s)")
        sub.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")

    rank_parser = commands.add_parser("rank", help="rank documents for a query")
    add_connection(rank_parser)
    rank_parser.add_argument("--query", required=True, help="the query text")
    source = rank_parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--documents-file",
        metavar="FILE",
        help="one document per line, or a JSON array of strings if FILE ends in .json; - for stdin",
    )
    source.add_argument("documents", nargs="*", default=[], metavar="DOC", help="documents to rank")
    rank_parser.add_argument("--top-n", type=int, default=None, help="keep the N best (default: all)")
    rank_parser.add_argument("--normalize", action="store_true", help="report sigmoid(score) in [0, 1]")
    rank_parser.add_argument("--compression", choices=[c.value for c in Compression], default=Compression.NONE.value)
    rank_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    health_parser = commands.add_parser("health", help="report server liveness and model readiness")
    add_connection(health_parser)
    health_parser.add_argument("--wait", action="store_true", help="wait up to --timeout for the model to become ready")
    health_parser.add_argument(
        "--canary",
        action="store_true",
        help="also rerank one tiny request through the whole ensemble: a server whose python step "
        "died still reports ready, but fails this (exit 1)",
    )
    return parser


def _rank(args: argparse.Namespace) -> int:
    documents = read_documents(args.documents_file) if args.documents_file else list(args.documents)
    if not documents:
        raise UsageError("no documents to rank")
    if args.top_n is not None and args.top_n < 1:
        raise UsageError("--top-n must be at least 1")
    with _client(args, compression=Compression(args.compression)) as client:
        results = client.rerank(
            args.query, documents, top_n=args.top_n, normalize=args.normalize, return_documents=args.json
        )
    if args.json:
        payload = [{"index": r.index, "score": r.score, "document": r.document} for r in results]
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(format_table(results, documents, width=shutil.get_terminal_size().columns))
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.wait:
            client.wait_until_ready()
        live = client.is_live()
        ready = live and client.is_ready()
        canary = client.canary() if args.canary and ready else None
    line = f"live: {'yes' if live else 'no'}  ready ({args.model}): {'yes' if ready else 'no'}"
    if canary is not None:
        outcome = f"ok in {canary.seconds * 1000:.0f} ms" if canary.healthy else f"FAILED: {canary.error}"
        line += f"  canary: {outcome}"
    print(line)
    return 0 if ready and (canary is None or canary.healthy) else 1


def _client(args: argparse.Namespace, compression: Compression = Compression.NONE) -> RerankerClient:
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    return RerankerClient(
        args.url,
        model=args.model,
        timeout=args.timeout,
        tls=TLSConfig() if args.tls else None,
        compression=compression,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "rank":
            return _rank(args)
        return _health(args)
    except UsageError as exc:
        print(f"reranker-client: error: {exc}", file=sys.stderr)
        return 2
    except RerankerError as exc:
        print(f"reranker-client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
