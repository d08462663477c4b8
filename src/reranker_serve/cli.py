"""``reranker-serve``: run a local Triton on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from .errors import ServeError
from .server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, SERVER_FLAGS, TritonServer

PROG = "reranker-serve"


class _Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so the server is stopped on the way out."""


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run the tritonserver bundled in the nvidia-pytriton wheel on a model repository "
            "(python-backend models, e.g. the cpu profile), print its URLs once every model is "
            "ready, and serve until Ctrl-C or SIGTERM. Flags always passed: " + " ".join(SERVER_FLAGS)
        ),
        epilog=f"Arguments after `--` go to tritonserver unchanged, e.g. `{PROG} --model-repository R -- "
        "--log-verbose=1`.",
    )
    parser.add_argument("--model-repository", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--http-port",
        type=_port,
        default=DEFAULT_HTTP_PORT,
        metavar="PORT",
        help="default %(default)s; 0 picks a free port",
    )
    parser.add_argument(
        "--grpc-port",
        type=_port,
        default=DEFAULT_GRPC_PORT,
        metavar="PORT",
        help="default %(default)s; 0 picks a free port",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help="default %(default)s; 0 picks a free port",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--log-file", type=Path, default=None, metavar="FILE", help="server log (default: in a temp dir)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        default=180.0,
        metavar="S",
        help="seconds to wait for every model to load (default %(default)s)",
    )
    return parser


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to tritonserver (argparse would try to parse `--flags`).
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    triton_args = argv[split + 1 :]
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port or None,
        grpc_port=args.grpc_port or None,
        metrics_port=args.metrics_port or None,
        log_file=args.log_file,
        startup_timeout_s=args.timeout,
        extra_args=triton_args,
        host=args.host,
    )
    with _sigterm_as_exception():
        try:
            print(
                f"{PROG}: starting tritonserver on {args.model_repository} ...",
                flush=True,
            )
            began = time.monotonic()
            server.start()
            print(
                f"tritonserver ready in {time.monotonic() - began:.1f} s (pid {server.pid})\n"
                f"  HTTP:    {server.http_url}\n"
                f"  gRPC:    {server.grpc_url}\n"
                f"  metrics: {server.metrics_url}\n"
                f"  log:     {server.log_path}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            returncode = server.wait()
            error = server.last_error()
            detail = f": {error}" if error else ""
            return _fail(f"tritonserver exited with code {returncode}{detail} (server log: {server.log_path})")
        except (KeyboardInterrupt, _Terminated):
            print(f"{PROG}: stopping tritonserver ...", flush=True)
            return 0
        except ServeError as error:
            return _fail(str(error))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
