"""``reranker-gateway``: serve the HTTP rerank API (Cohere v1/v2, Jina, TEI) in front of a Triton server.

    reranker-gateway --triton localhost:8001                       # http://127.0.0.1:8080
    reranker-gateway --triton localhost:8001 --host 0.0.0.0 --port 8080 --model-name bge-reranker-v2-m3
    RERANKER_GATEWAY_API_KEYS=key1,key2 reranker-gateway --triton localhost:8001
    reranker-gateway --print-openapi > docs/openapi.json

Exit codes: 0 stopped cleanly, 1 the server could not start, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reranker_common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, HelpFormatter, progress_printer

from .settings import (
    DEFAULT_HEALTH_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_DOCUMENTS,
    DEFAULT_RETRY_AFTER_S,
    DEFAULT_TIMEOUT_S,
    GatewaySettings,
)

PROG = "reranker-gateway"
TRITON_ENV = "RERANKER_URL"
KEYS_ENV = "RERANKER_GATEWAY_API_KEYS"
OPENAPI_PLACEHOLDER_URL = "localhost:8001"
DEFAULT_KEEP_ALIVE_S = 75  # above common load-balancer idle timeouts (60 s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="HTTP rerank API compatible with Cohere (POST /v1/rerank, /v2/rerank), Jina (/v1/rerank) "
        "and Hugging Face TEI (POST /rerank), in front of the reranker ensemble on Triton (gRPC). "
        "Also serves GET /health (canary rerank), /livez, /info, /metrics and /openapi.json.",
        epilog=f"API keys: ${KEYS_ENV} (comma-separated) or --api-key-file; without either, no authentication. "
        "TLS: --ssl-certfile/--ssl-keyfile, or terminate it at the ingress. "
        "Exit codes: 0 stopped, 1 could not start, 2 usage error, 130 interrupted.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--triton",
        default=os.environ.get(TRITON_ENV),
        metavar="HOST:PORT",
        help=f"Triton's gRPC address (default: ${TRITON_ENV})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-name", default=None, help="the name requests may give in 'model' (default: reranker)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds each rerank may take; past it: 504"
    )
    parser.add_argument(
        "--max-documents", type=int, default=DEFAULT_MAX_DOCUMENTS, help="documents per request; more: 413"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="request body size; larger: 413"
    )
    parser.add_argument(
        "--api-key-file", type=Path, default=None, help="accepted bearer tokens, one per line (# comments)"
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="attempts per Triton request while it is unavailable (default: as many as --timeout allows)",
    )
    parser.add_argument(
        "--retry-after", type=int, default=DEFAULT_RETRY_AFTER_S, help="Retry-After seconds on 503 answers"
    )
    parser.add_argument(
        "--health-timeout", type=float, default=DEFAULT_HEALTH_TIMEOUT_S, help="seconds the /health canary may take"
    )
    parser.add_argument(
        "--keep-alive",
        type=int,
        default=DEFAULT_KEEP_ALIVE_S,
        help="seconds an idle HTTP connection stays open; keep it above the idle timeout of the load balancer "
        "or client pool in front (uvicorn's own default, 5 s, makes pooled clients hit closed connections)",
    )
    parser.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", default=None, help="the certificate's private key (PEM)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (costs CPU per request)")
    parser.add_argument(
        "--print-openapi", action="store_true", help="print the OpenAPI document as JSON and exit (no server)"
    )
    return parser


class UsageError(Exception):
    pass


def read_api_keys(path: Path | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[str, ...]:
    """Keys from ``$RERANKER_GATEWAY_API_KEYS`` (comma-separated) and the key file (one per line)."""
    keys = [key.strip() for key in environ.get(KEYS_ENV, "").split(",") if key.strip()]
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --api-key-file {path}: {exc}") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise UsageError(f"--api-key-file {path} holds no key")
    return tuple(dict.fromkeys(keys))


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    if not args.triton:
        raise UsageError(f"--triton HOST:PORT is required (or set ${TRITON_ENV})")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    if args.keep_alive <= 0:
        raise UsageError(f"--keep-alive must be positive, got {args.keep_alive}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    extra = {"model_name": args.model_name} if args.model_name else {}
    try:
        return GatewaySettings(
            triton_url=args.triton,
            timeout_s=args.timeout,
            max_documents=args.max_documents,
            max_body_bytes=args.max_body_bytes,
            api_keys=read_api_keys(args.api_key_file),
            retry_after_s=args.retry_after,
            health_timeout_s=args.health_timeout,
            max_attempts=args.max_attempts,
            **extra,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def openapi_document() -> dict[str, object]:
    """The OpenAPI document the app serves (it does not depend on the settings)."""
    from .app import create_app

    return create_app(GatewaySettings(triton_url=OPENAPI_PLACEHOLDER_URL)).openapi()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_openapi:
        print(json.dumps(openapi_document(), indent=2, sort_keys=True))
        return EXIT_OK
    try:
        settings = settings_from_args(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    import uvicorn

    from .app import create_app

    say = progress_printer()
    scheme = "https" if args.ssl_certfile else "http"
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no authentication"
    say(f"serving {scheme}://{args.host}:{args.port} -> Triton {settings.triton_url} ({auth})")
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            server_header=False,
            timeout_keep_alive=args.keep_alive,
        )
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start (port in use, bad certificate)
        if exc.code not in (None, 0):
            print(f"{PROG}: error: the server could not start (uvicorn exit status {exc.code})", file=sys.stderr)
            return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
