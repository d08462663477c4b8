"""``reranker-serve``: run a local Triton on a model repository until Ctrl-C or SIGTERM, healing it."""

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

from reranker_client.config import ENSEMBLE_NAME
from reranker_common import EXIT_FAILURE, EXIT_OK, progress_printer

from .errors import ServeError
from .server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, SERVER_FLAGS, TritonServer
from .supervisor import HealingPolicy, Supervisor

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


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run the tritonserver bundled in the nvidia-pytriton wheel on a model repository "
            "(python-backend models, e.g. the cpu profile), print its URLs once every model is "
            "ready, and serve until Ctrl-C or SIGTERM. While it serves, a canary rerank every few seconds "
            "checks that requests get answers; the server is restarted on the same ports when one of its "
            "python stubs is gone (a dead stub leaves it live and ready but failing every request), when "
            "the canary fails several times in a row, or when it exits. Flags always passed: " + " ".join(SERVER_FLAGS)
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
    defaults = HealingPolicy()
    heal = parser.add_argument_group(
        "self-healing", "The defaults restart a server whose stub died within about 17 s of the fault (docs/serve.md)."
    )
    heal.add_argument(
        "--no-heal",
        dest="heal",
        action="store_false",
        help="no canary, no restarts: exit 1 when the server exits (a dead stub goes unnoticed)",
    )
    heal.add_argument(
        "--canary-interval",
        type=_positive,
        default=defaults.canary_interval_s,
        metavar="S",
        help="seconds between canary reranks (default %(default)s)",
    )
    heal.add_argument(
        "--failure-interval",
        type=_positive,
        default=defaults.failure_interval_s,
        metavar="S",
        help="seconds between canaries once one failed (default %(default)s)",
    )
    heal.add_argument(
        "--canary-timeout",
        type=_positive,
        default=defaults.canary_timeout_s,
        metavar="S",
        help="deadline of one canary, at most the interval (default %(default)s)",
    )
    heal.add_argument(
        "--canary-failures",
        type=_at_least_one,
        default=defaults.canary_failures,
        metavar="K",
        help="restart after K failed canaries in a row (default %(default)s)",
    )
    heal.add_argument(
        "--max-restarts",
        type=_count,
        default=defaults.max_restarts,
        metavar="N",
        help="restarts allowed within --restart-window; one more exits 1 (default %(default)s)",
    )
    heal.add_argument(
        "--restart-window",
        type=_positive,
        default=defaults.restart_window_s,
        metavar="S",
        help="seconds over which --max-restarts counts (default %(default)s)",
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
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to tritonserver (argparse would try to parse `--flags`).
    split = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:split])
    policy: HealingPolicy | None = None
    # The canary reranks through the `reranker` ensemble: a repository without it cannot be probed.
    probeable = (args.model_repository / ENSEMBLE_NAME).is_dir()
    if args.heal:
        try:
            policy = HealingPolicy(
                canary_interval_s=args.canary_interval,
                failure_interval_s=args.failure_interval,
                canary_timeout_s=args.canary_timeout,
                canary_failures=args.canary_failures,
                max_restarts=args.max_restarts,
                restart_window_s=args.restart_window,
            )
        except ValueError as error:
            parser.error(str(error))  # exit 2
        if not probeable:
            policy = None
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
                + (
                    f"  healing: canary every {policy.canary_interval_s:g} s, restart after "
                    f"{policy.canary_failures} failures in a row (at most {policy.max_restarts} in "
                    f"{policy.restart_window_s:g} s)\n"
                    if policy is not None
                    else f"  healing: off{'' if probeable else f' (no {ENSEMBLE_NAME!r} model for the canary)'}\n"
                )
                + "Press Ctrl-C to stop.",
                flush=True,
            )
            if policy is not None:
                # Returns only by raising: HealingError (a ServeError) when restarts run out.
                Supervisor(server, policy, log=progress_printer()).run()
            returncode = server.wait()
            last_error = server.last_error()
            detail = f": {last_error}" if last_error else ""
            return _fail(f"tritonserver exited with code {returncode}{detail} (server log: {server.log_path})")
        except (KeyboardInterrupt, _Terminated):
            print(f"{PROG}: stopping tritonserver ...", flush=True)
            return EXIT_OK
        except ServeError as error:
            return _fail(str(error))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
