"""Self-healing: watch a running ``TritonServer`` with the canary and restart it when it stops serving.

Triton does not restart a python backend stub that died (an OOM kill, say): the server stays live
and ready while every request fails. Only a request through the whole ensemble shows it, so the
supervisor sends the canary rerank (``RerankerClient.canary``) every ``canary_interval_s`` and
restarts the server after ``canary_failures`` failures in a row, on the same ports. It restarts a
server whose process exited as well, and, without waiting for canaries, one whose python stub
processes are not all alive any more (``watch_stubs``): requests queued behind a dead stub wait
until their timeout, and at high load so many of them are then shed at once that the clients'
retry budgets run out, which the canaries' 5-11 s of detection was too slow to prevent.
Restarts are bounded (``max_restarts`` within ``restart_window_s``); past that, ``run`` raises
``HealingError`` instead of looping forever.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from reranker_client import RerankerClient, RetryPolicy

from .errors import ServeError
from .server import TritonServer


class HealingError(ServeError):
    """The server could not be kept serving: restarts ran out, or the last one failed."""


@dataclass(frozen=True, kw_only=True)
class HealingPolicy:
    """When the supervisor probes, when it gives up on the server, and how often it may restart it.

    The defaults heal a zombie within about 17 s of a stub's death: the first failed canary comes
    at most ``canary_interval_s`` after it, the ``canary_failures``-th one at most ``(K - 1)``
    times ``max(failure_interval_s, canary_timeout_s)`` later, so detection takes at most 11 s;
    the restart takes a few seconds more. One slow answer is not a dead server: K failures in a
    row are needed, and they come quickly, since every second of a zombie fails its share of
    requests.
    """

    canary_interval_s: float = 5.0
    """Seconds from one canary's start to the next one's."""
    failure_interval_s: float = 1.0
    """Seconds between canaries once one has failed, until one passes or the server is restarted."""
    canary_timeout_s: float = 2.0
    """Deadline of one canary (one attempt, no retry); a canary rerank takes milliseconds."""
    canary_failures: int = 3
    """Consecutive failed canaries that mean the server is not serving."""
    max_restarts: int = 5
    """Restarts allowed within ``restart_window_s``; one more is a ``HealingError``."""
    restart_window_s: float = 600.0
    restart_grace_s: float = 1.0
    """SIGTERM grace before SIGKILL on a restart: a server with a dead stub would otherwise wait
    its whole exit timeout for requests that cannot finish."""
    watch_stubs: bool = True
    """Restart as soon as a python backend stub of the server is gone (checked every 0.25 s, from
    ``/proc``), not only after the canaries fail. Triton never restarts a stub, so a gone stub
    always means a zombie."""

    def __post_init__(self) -> None:
        for name in ("canary_interval_s", "failure_interval_s", "canary_timeout_s", "restart_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.canary_timeout_s > self.canary_interval_s:
            raise ValueError("canary_timeout_s must not exceed canary_interval_s")
        if self.canary_failures < 1:
            raise ValueError(f"canary_failures must be >= 1, got {self.canary_failures}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.restart_grace_s < 0:
            raise ValueError(f"restart_grace_s must be >= 0, got {self.restart_grace_s}")


class RestartReason(str, Enum):
    CANARY = "canary"
    """``canary_failures`` canaries failed in a row: the server runs but does not serve."""
    EXITED = "exited"
    """The server process exited."""
    STUB_EXITED = "stub_exited"
    """A python backend stub of the server is gone (killed, out of memory): the server is a zombie."""


@dataclass(frozen=True, kw_only=True)
class Restart:
    """One detection and the restart it caused. Times are ``time.monotonic()`` readings."""

    reason: RestartReason
    detail: str
    """The last canary's error, or the exit status and the server's last error line."""
    last_healthy_at: float
    """The last passing canary (or the server's start) before the failure: the fault came after it."""
    first_failure_at: float
    """The first failed canary began, or the exit was seen."""
    detected_at: float
    """The supervisor decided to restart."""
    serving_at: float | None
    """A canary passed on the restarted server; ``None`` when the restart failed."""
    error: str | None = None
    """Why the restart failed."""

    @property
    def detected_after_s(self) -> float:
        """From the last healthy canary to the decision: an upper bound on the time since the fault."""
        return self.detected_at - self.last_healthy_at

    @property
    def recovered_after_s(self) -> float | None:
        """From the decision to the first passing canary on the restarted server."""
        return None if self.serving_at is None else self.serving_at - self.detected_at


Log = Callable[[str], None]


def _quiet(message: str) -> None:
    del message


class Supervisor:
    """Keeps a started ``TritonServer`` serving: ``run()`` blocks until ``stop()`` or a ``HealingError``.

    Every detection and restart is written to ``log`` (one line each, with timings) and kept in
    ``restarts``. The caller owns the server and stops it afterwards.

    >>> server = TritonServer(repository).start()
    >>> supervisor = Supervisor(server, HealingPolicy(), log=print)
    >>> threading.Thread(target=supervisor.run).start()  # or run() in the main thread
    """

    def __init__(self, server: TritonServer, policy: HealingPolicy | None = None, *, log: Log = _quiet) -> None:
        self.server = server
        self.policy = policy if policy is not None else HealingPolicy()
        self._log = log
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._restarts: list[Restart] = []
        self._client: RerankerClient | None = None
        self._failures = 0
        self._first_failure_at = 0.0
        self._last_healthy_at = time.monotonic()
        self._stubs: dict[int, str] = {}

    @property
    def restarts(self) -> list[Restart]:
        """Every restart so far, oldest first (a copy)."""
        with self._lock:
            return list(self._restarts)

    def stop(self) -> None:
        """Ask ``run()`` to return; a restart under way finishes first. Thread-safe."""
        self._stopping.set()

    def run(self) -> None:
        """Supervise until ``stop()``; raises ``HealingError`` when the server cannot be kept serving."""
        if self.server.pid is None:  # one that has died since its start is healed like any other
            raise ServeError("start the server before supervising it")
        recent: deque[float] = deque()  # restart times within the window
        self._last_healthy_at = time.monotonic()
        self._watch_stubs()
        next_canary = self._last_healthy_at + self.policy.canary_interval_s
        try:
            while not self._stopping.is_set():
                returncode = self.server.wait(timeout=min(0.25, max(0.0, next_canary - time.monotonic())))
                if self._stopping.is_set():
                    return
                if returncode is not None:
                    last_error = self.server.last_error()
                    detail = f"tritonserver exited with code {returncode}" + (f": {last_error}" if last_error else "")
                    self._restart(RestartReason.EXITED, detail, time.monotonic(), recent)
                elif gone := [name for pid, name in self._stubs.items() if not stub_alive(pid)]:
                    detail = f"python backend stub(s) gone: {', '.join(sorted(gone))}"
                    self._restart(RestartReason.STUB_EXITED, detail, time.monotonic(), recent)
                elif time.monotonic() >= next_canary:
                    failure = self._probe()
                    if failure is None or self._failures < self.policy.canary_failures:
                        policy = self.policy
                        next_canary += policy.canary_interval_s if failure is None else policy.failure_interval_s
                        continue
                    self._restart(RestartReason.CANARY, failure, self._first_failure_at, recent)
                else:
                    continue
                # After a restart (or a failed one), the next canary is one interval away.
                next_canary = time.monotonic() + self.policy.canary_interval_s
        finally:
            self._close_client()

    # -- probing ---------------------------------------------------------------------------------

    def _watch_stubs(self) -> None:
        """Remember the server's python stubs (called when it serves), if stubs are watched."""
        pid = self.server.pid
        self._stubs = python_stubs(pid) if self.policy.watch_stubs and pid is not None else {}

    def _canary_client(self) -> RerankerClient:
        if self._client is None:
            # Retries would hide the failure the probe is for; the canary makes one attempt anyway.
            self._client = RerankerClient(
                self.server.grpc_url, timeout=self.policy.canary_timeout_s, retries=RetryPolicy.disabled()
            )
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _probe(self) -> str | None:
        """Run one canary; ``None`` when it passed, else its error (and the failure is counted)."""
        started = time.monotonic()
        result = self._canary_client().canary()
        if result.healthy:
            if self._failures:
                self._log(f"canary passed again after {self._failures} failure(s)")
            self._failures = 0
            self._last_healthy_at = time.monotonic()
            return None
        if self._failures == 0:
            self._first_failure_at = started
        self._failures += 1
        error = result.error or "unknown error"
        self._log(f"canary failed ({self._failures}/{self.policy.canary_failures}) in {result.seconds:.2f} s: {error}")
        return error

    # -- restarting ------------------------------------------------------------------------------

    def _restart(self, reason: RestartReason, detail: str, first_failure_at: float, recent: deque[float]) -> None:
        policy = self.policy
        detected_at = time.monotonic()
        while recent and recent[0] < detected_at - policy.restart_window_s:
            recent.popleft()
        what = {
            RestartReason.CANARY: f"{policy.canary_failures} canaries failed in a row",
            RestartReason.EXITED: "server exited",
            RestartReason.STUB_EXITED: "a python stub is gone",
        }[reason]
        self._log(
            f"not serving ({what}): detected {detected_at - self._last_healthy_at:.1f} s after the last "
            f"healthy canary, {detected_at - first_failure_at:.1f} s after the first failure; {detail}"
        )
        if len(recent) >= policy.max_restarts:
            raise HealingError(
                f"tritonserver stopped serving again after {len(recent)} restart(s) within "
                f"{policy.restart_window_s:g} s (at most {policy.max_restarts} allowed); giving up. "
                f"Last failure: {detail} (server log: {self.server.log_path})"
            )
        recent.append(detected_at)
        number = len(recent)
        self._log(
            f"restarting tritonserver ({number} of at most {policy.max_restarts} in {policy.restart_window_s:g} s)"
        )
        self._close_client()
        self._failures = 0
        error: str | None = None
        serving_at: float | None = None
        try:
            self.server.restart(grace_s=policy.restart_grace_s)
            # Ready is not serving: the canary must pass on the new server too.
            result = self._canary_client().canary()
            if result.healthy:
                serving_at = time.monotonic()
                self._watch_stubs()
            else:
                error = f"the first canary after the restart failed: {result.error}"
        except ServeError as exc:
            error = str(exc)
        record = Restart(
            reason=reason,
            detail=detail,
            last_healthy_at=self._last_healthy_at,
            first_failure_at=first_failure_at,
            detected_at=detected_at,
            serving_at=serving_at,
            error=error,
        )
        with self._lock:
            self._restarts.append(record)
        if serving_at is not None:
            self._last_healthy_at = serving_at
            self._log(
                f"serving again {serving_at - detected_at:.1f} s after the detection "
                f"({serving_at - record.last_healthy_at:.1f} s after the last healthy canary; pid {self.server.pid})"
            )
            return
        self._stubs = {}
        self._log(f"restart failed: {error}")
        if self.server.is_running():
            self._failures = 1  # up but not serving: counts towards the next restart
            self._first_failure_at = detected_at
        else:
            # The loop sees the dead process and tries again (while restarts are left); pause
            # first so that a cause that takes a moment to clear (a port in use) can clear.
            self._stopping.wait(policy.canary_interval_s)


STUB_COMMAND = "triton_python_backend_stub"


def python_stubs(server_pid: int) -> dict[int, str]:
    """The live python backend stubs under ``server_pid`` (any depth), by pid, each with the model
    instance it serves (the stub's second argument, e.g. ``.../reranker_model/1/model.py``)."""
    children: dict[int, list[int]] = {}
    commands: dict[int, list[str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            if fields[0] in ("Z", "X"):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue  # gone while reading
    stubs: dict[int, str] = {}
    pending = list(children.get(server_pid, []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        command = commands.get(pid, [])
        if command and STUB_COMMAND in command[0]:
            stubs[pid] = next((part for part in command[1:] if part.endswith(".py")), command[0])
    return stubs


def stub_alive(pid: int) -> bool:
    """Running, and not a zombie that its parent has yet to reap."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
