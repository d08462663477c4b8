"""Run the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel on a model repository.

The wheel ships the server binary, the python backend and one backend stub per Python
version, but not in the layout ``tritonserver`` expects, so each server gets a private
``backends/python/`` folder holding the backend and the stub of the running interpreter.
Nothing from pytriton's own (heavy) runtime is imported: the package is only located.

One module for one job, the server process's life (locate, lay out, start, wait until ready,
watch, stop, clean up): its ~550 lines are that lifecycle's failure handling (ports in use,
fatal log lines, parent death, stuck shutdowns), which reads best in one place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from reranker_common import free_port

from .errors import (
    ModelRepositoryError,
    ServeError,
    ServerStartError,
    ServerTimeoutError,
    TritonNotFoundError,
)

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

SERVER_FLAGS: tuple[str, ...] = (
    # Load every model at startup; nothing can load or unload models through the API.
    "--model-control-mode=none",
    # /v2/health/ready is true only when every model is ready (the readiness probe relies on it).
    "--strict-readiness=true",
    # A model that fails to load stops the server instead of leaving it half up.
    "--exit-on-error=true",
    # Configs are fully rendered by reranker_export and tested; the server must run exactly
    # them, not a version the backend silently completed (e.g. python's default batch size).
    "--disable-auto-complete-config",
    "--log-verbose=0",
)
"""Flags every deployment passes to ``tritonserver`` (this launcher and the Kubernetes manifests)."""

INSTALL_HINT = 'pip install "triton-reranker[serve]"'
LOG_FILE_NAME = "tritonserver.log"

_SHM_DIR = Path("/dev/shm")
_STOP_GRACE_S = 30.0  # Triton's own --exit-timeout-secs default: in-flight requests may finish
_GROUP_EXIT_WAIT_S = 5.0
_HEALTH_REQUEST_TIMEOUT_S = 2.0
_PORT_ATTEMPTS = 3  # free ports are probed then released, so another process may grab one

# glog line: ``E1122 04:18:43.870409 4000 model_lifecycle.cc:642] "message"``
_GLOG_LINE = re.compile(
    r"^(?P<severity>[IWEF])\d{4} \d{2}:\d{2}:\d{2}\.\d+\s+\d+\s+(?P<source>[\w.\-]+:\d+)\]\s?(?P<message>.*)$"
)
_PROTOBUF_ERROR = re.compile(r"^\[libprotobuf ERROR [^\]]*\]\s*(?P<message>.*)$")
# Error lines that appear on every start without a GPU and mean nothing here.
_BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)
# Errors after which the server is certain to exit (--exit-on-error): raise at once instead of
# waiting for it to unload the models that did load.
_FATAL_MESSAGES = (
    re.compile(r"^failed to load '[^']*' version"),
    re.compile(r"^Poll failed for model directory"),
    re.compile(r"^failed to start"),
)
_PORT_IN_USE = "already in use"


@dataclass(frozen=True, kw_only=True)
class TritonInstall:
    """Where the pieces of ``tritonserver`` sit inside the ``nvidia-pytriton`` wheel."""

    binary: Path
    python_backend: Path
    """The python backend (``libtriton_python.so`` and ``triton_python_backend_utils.py``)."""
    stub: Path
    """``triton_python_backend_stub`` built for the running interpreter's Python version."""
    libs: Path
    """``nvidia_pytriton.libs``: the shared libraries the binary links against."""


def find_triton() -> TritonInstall:
    """Locate ``tritonserver`` and the python backend in the installed ``nvidia-pytriton`` wheel.

    Raises ``TritonNotFoundError`` with the install command when the wheel or a piece is missing.
    """
    try:
        # find_spec on a top-level name does not run the package's __init__ (which imports a lot).
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(f"the nvidia-pytriton wheel is not installed: {INSTALL_HINT}")
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    if not install.stub.is_file():
        raise TritonNotFoundError(
            f"nvidia-pytriton has no python backend stub for Python {version} ({install.stub}); "
            f"use a supported Python or upgrade: {INSTALL_HINT}"
        )
    for path in (install.binary, install.python_backend, install.libs):
        if not path.exists():
            raise TritonNotFoundError(f"incomplete nvidia-pytriton install, missing {path}: {INSTALL_HINT}")
    return install


def _clean_message(message: str) -> str:
    """Triton quotes its messages and escapes newlines: keep the first line, unquoted."""
    message = message.strip()
    if len(message) >= 2 and message[0] == message[-1] == '"':
        message = message[1:-1]
    return message.split("\\n", 1)[0].split("\n", 1)[0].strip()


def _parse_error(line: str) -> tuple[str, bool] | None:
    """``(message, fatal)`` when ``line`` is an error line of the server, else ``None``."""
    match = _GLOG_LINE.match(line)
    if match:
        if match["severity"] not in "EF":
            return None
        message = _clean_message(match["message"])
        if not message or any(benign in message for benign in _BENIGN_ERRORS):
            return None
        return message, any(pattern.match(message) for pattern in _FATAL_MESSAGES)
    if line.startswith("error: "):  # tritonserver's last words, e.g. "error: creating server: ..."
        return _clean_message(line), False
    return None


def server_error(lines: Sequence[str]) -> str | None:
    """The most telling error line of a server log, cleaned for a one-line message.

    Preference: a model's own load failure, then any other error line, then the
    ``error: creating server: ...`` summary. A protobuf parse error (a config.pbtxt
    typo) is appended to the error it caused, since Triton's line omits the detail.
    """
    fatal: list[str] = []
    other: list[str] = []
    summary: list[str] = []
    protobuf: list[str] = []
    for line in lines:
        proto = _PROTOBUF_ERROR.match(line)
        if proto:
            protobuf.append(proto["message"].strip())
            continue
        parsed = _parse_error(line)
        if parsed is None:
            continue
        message, is_fatal = parsed
        (fatal if is_fatal else summary if message.startswith("error: ") else other).append(message)
    candidates = fatal or other or summary
    if not candidates:
        return None
    chosen = candidates[0]
    if protobuf and "failed to read text proto" in chosen:
        chosen = f"{chosen}: {protobuf[0]}"
    return chosen


class _LogReader:
    """Reads the complete lines appended to the server log since the last call."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self._path = path
        self._offset = offset
        self._partial = b""
        self.lines: list[str] = []

    def read_new(self) -> list[str]:
        try:
            with self._path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        new = [raw.decode("utf-8", "replace").rstrip("\r") for raw in complete]
        self.lines.extend(new)
        return new

    def read_all(self) -> list[str]:
        self.read_new()
        if self._partial:
            self.lines.append(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        return self.lines


def _parent_death_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM --`` when available: Linux SIGTERMs the server if this process dies
    without cleanup (a SIGKILL, say); atexit and finalizers cover the ordinary exits.

    Done by an exec'd helper rather than a ``preexec_fn``: a ``preexec_fn`` forces a plain fork,
    and in a process that already holds gRPC channels gRPC's fork handlers then crash the child
    now and then ("epoll_wait error: Bad file descriptor"). PR_SET_PDEATHSIG fires when the
    *thread* that started the child exits, so it is only used from the main thread.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


@dataclass(kw_only=True)
class _Running:
    """What stopping a server needs, kept apart from ``TritonServer`` so a finalizer can hold it."""

    process: subprocess.Popen[bytes]
    shm_prefix: str
    remove: tuple[Path, ...]
    """Folders deleted after the stop (the backend copy; the work dir unless it holds the log)."""
    grace_s: float

    def shutdown(self) -> None:
        process = self.process
        if process.poll() is None:
            # SIGTERM to the server only: it unloads the models and stops its stubs itself.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Stubs left behind by a crash or a SIGKILL share the group (start_new_session).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + _GROUP_EXIT_WAIT_S
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # not ours to wait(): they are reparented once the server is gone
        # The python backend's shared-memory regions survive a SIGKILL; the prefix is ours alone.
        if _SHM_DIR.is_dir():
            for region in _SHM_DIR.glob(f"{self.shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()
        for folder in self.remove:
            shutil.rmtree(folder, ignore_errors=True)


class TritonServer:
    """A local ``tritonserver`` process serving ``model_repository``.

    Ports left as ``None`` are picked free. ``start()`` returns once ``/v2/health/ready``
    answers 200 (every model loaded, ``--strict-readiness``); it raises ``ServerStartError``
    with the server's own error line when the process exits or a model fails to load, and
    ``ServerTimeoutError`` after ``startup_timeout_s``. The server runs in its own process
    group and is stopped (SIGTERM, then SIGKILL after the grace period) by ``stop()``, by
    ``__exit__``, when this object is collected and at interpreter exit.

    >>> with TritonServer(Path("model_repository")) as server:
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: Path | None = None,
        startup_timeout_s: float = 180.0,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        stop_grace_s: float = _STOP_GRACE_S,
    ) -> None:
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be positive, got {startup_timeout_s}")
        if stop_grace_s < 0:
            raise ValueError(f"stop_grace_s must be >= 0, got {stop_grace_s}")
        self.model_repository = Path(model_repository)
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.extra_args = tuple(extra_args)
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self._log_file = Path(log_file) if log_file is not None else None
        self._http_port: int | None = None
        self._grpc_port: int | None = None
        self._metrics_port: int | None = None
        self._log_path: Path | None = None
        self._log_offset = 0  # where the current run's lines begin (a restart appends)
        self._command: tuple[str, ...] = ()
        self._running: _Running | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.RLock()

    # -- addresses -------------------------------------------------------------------------

    def _port(self, port: int | None) -> int:
        if port is None:
            raise ServeError("the server has not been started")
        return port

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_port(self) -> int:
        return self._port(self._http_port)

    @property
    def grpc_port(self) -> int:
        return self._port(self._grpc_port)

    @property
    def metrics_port(self) -> int:
        return self._port(self._metrics_port)

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` of the KServe v2 HTTP endpoint."""
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``HOST:PORT`` as ``tritonclient.grpc.InferenceServerClient`` expects it."""
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint, ``http://HOST:PORT/metrics``."""
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr; kept after ``stop()``."""
        if self._log_path is None:
            raise ServeError("the server has not been started")
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of ``tritonserver`` (also its process group id); ``None`` before start."""
        return self._running.process.pid if self._running is not None else None

    @property
    def command(self) -> tuple[str, ...]:
        """The command line of the last start."""
        return self._command

    # -- state -----------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self._running is not None and self._running.process.poll() is None

    def is_ready(self) -> bool:
        """``GET /v2/health/ready`` answers 200: the server is up and every model is ready."""
        if not self.is_running():
            return False
        # No proxy: an http_proxy in the environment must not see requests to localhost.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.http_url}/v2/health/ready", timeout=_HEALTH_REQUEST_TIMEOUT_S) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits (its exit status) or ``timeout`` passes (``None``)."""
        if self._running is None:
            raise ServeError("the server has not been started")
        try:
            return self._running.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def last_error(self) -> str | None:
        """The most telling error line the server has logged since its last start, if any."""
        if self._log_path is None:
            return None
        return server_error(_LogReader(self._log_path, self._log_offset).read_all())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> TritonServer:
        """Start the server and block until it is ready. Returns ``self``."""
        return self._start(append_log=False)

    def restart(self, *, grace_s: float | None = None) -> TritonServer:
        """Stop the server (``grace_s`` as in ``stop``) and start it again on the same ports.

        Clients keep their addresses and reconnect. The log goes on in the same file, appended.
        Raises like ``start``; a port taken meanwhile by another process is a ``ServerStartError``.
        """
        with self._lock:
            if self._http_port is None or self._log_path is None:
                raise ServeError("the server has not been started")
            self.stop(grace_s=grace_s)
            self._requested_ports = (self._http_port, self._grpc_port, self._metrics_port)
            self._log_file = self._log_path
            return self._start(append_log=True)

    def _start(self, *, append_log: bool) -> TritonServer:
        with self._lock:
            if self.is_running():
                raise ServeError(f"the server is already running (pid {self.pid})")
            install = find_triton()
            if not self.model_repository.is_dir():
                raise ModelRepositoryError(f"model repository {self.model_repository} is not a directory")
            workdir = Path(tempfile.mkdtemp(prefix="reranker-serve-"))
            self._log_path = self._log_file if self._log_file is not None else workdir / LOG_FILE_NAME
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            attempts_left = _PORT_ATTEMPTS if None in self._requested_ports else 1
            while True:
                attempts_left -= 1
                try:
                    self._launch(install, workdir, append_log=append_log)
                    self._wait_ready()
                    return self
                except ServerStartError as error:
                    if attempts_left and _PORT_IN_USE in error.server_error:
                        continue  # a probed free port was taken before the server bound it
                    raise
                except BaseException:
                    self.stop()
                    raise

    def _launch(self, install: TritonInstall, workdir: Path, *, append_log: bool) -> None:
        http, grpc, metrics = self._requested_ports
        self._http_port = http if http is not None else free_port(self.host)
        self._grpc_port = grpc if grpc is not None else free_port(self.host)
        self._metrics_port = metrics if metrics is not None else free_port(self.host)

        backends = workdir / "backends"
        shutil.rmtree(backends, ignore_errors=True)
        python_backend = backends / "python"
        shutil.copytree(install.python_backend, python_backend, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(install.stub, python_backend / install.stub.name)

        # Unique per server so parallel servers never share /dev/shm regions.
        shm_prefix = f"reranker_serve_{uuid.uuid4().hex[:12]}_"
        self._command = (
            str(install.binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={backends}",
            *SERVER_FLAGS,
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self._http_port}",
            f"--grpc-port={self._grpc_port}",
            f"--metrics-port={self._metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            *self.extra_args,
        )
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")]))
        # The stub embeds Python and takes its sys.path from the `python3` first on PATH
        # (PYTHONPATH is ignored), so this interpreter's bin dir (a venv's, unresolved) goes first.
        interpreter_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(filter(None, [interpreter_bin, env.get("PATH")]))

        assert self._log_path is not None
        self._log_offset = self._log_path.stat().st_size if append_log and self._log_path.exists() else 0
        with self._log_path.open("ab" if append_log else "wb") as log:
            process = subprocess.Popen(
                [*_parent_death_prefix(), *self._command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: the stubs can be killed with it
            )
        log_in_workdir = self._log_path.resolve().is_relative_to(workdir.resolve())
        self._running = _Running(
            process=process,
            shm_prefix=shm_prefix,
            remove=(backends,) if log_in_workdir else (backends, workdir),
            grace_s=self.stop_grace_s,
        )
        # Runs on stop(), when this object is collected, or at interpreter exit (atexit).
        self._finalizer = weakref.finalize(self, self._running.shutdown)

    def _wait_ready(self) -> None:
        assert self._running is not None and self._log_path is not None
        process = self._running.process
        log = _LogReader(self._log_path, self._log_offset)
        deadline = time.monotonic() + self.startup_timeout_s
        interval = 0.02
        while True:
            returncode = process.poll()
            fatal = [parsed[0] for line in log.read_new() if (parsed := _parse_error(line)) and parsed[1]]
            if fatal or returncode is not None:
                self.stop(grace_s=0.0)  # nothing to drain: kill at once, the error line is in the log
                lines = log.read_all()
                message = server_error(lines)  # prefers the fatal line, adds protobuf detail
                if message is None:
                    tail = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
                    message = f"tritonserver exited with code {process.returncode}; last log line: {tail}"
                raise ServerStartError(message, log_path=self._log_path, returncode=process.returncode)
            if self.is_ready():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop(grace_s=min(self.stop_grace_s, 5.0))
                raise ServerTimeoutError(
                    f"tritonserver was not ready after {self.startup_timeout_s:g} s", log_path=self._log_path
                )
            # Waiting on the process (not sleeping) returns at once if it exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(interval, remaining))
            interval = min(interval * 1.5, 0.25)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the server: SIGTERM, up to ``grace_s`` (default ``stop_grace_s``), then SIGKILL.

        Waits until no process of the server's group is left. Safe to call more than once.
        """
        with self._lock:
            if self._running is None or self._finalizer is None:
                return
            if grace_s is not None:
                self._running.grace_s = grace_s
            self._finalizer()  # runs shutdown at most once

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}, http={self.http_url}" if self.is_running() else "stopped"
        return f"TritonServer({str(self.model_repository)!r}, {state})"
