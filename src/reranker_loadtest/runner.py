"""Run the Locust test headless with sensible defaults and collect its SLO verdict.

Locust runs in a child process (``python -m locust``): it monkey-patches the standard
library with gevent at import, which must not happen in the caller's process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from reranker_client.config import ENSEMBLE_NAME

from .errors import LoadtestError, TargetUnavailableError
from .slo import SloSettings, Verdict
from .workload import WorkloadSettings

DEFAULT_TARGET = "127.0.0.1:8001"
DEFAULT_USERS = 16
DEFAULT_RUN_TIME_S = 60.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_REQUEST_POOL = 64
VERDICT_FILE = "verdict.json"
HTML_FILE = "report.html"
CSV_PREFIX = "stats"


def locustfile_path() -> Path:
    """The locustfile shipped in the package (for ``locust -f`` in distributed runs)."""
    return Path(str(resources.files("reranker_loadtest").joinpath("locustfile.py")))


@dataclass(frozen=True, kw_only=True)
class LoadtestSettings:
    target: str = DEFAULT_TARGET
    """gRPC address of Triton, ``host:port``."""
    model: str = ENSEMBLE_NAME
    users: int = DEFAULT_USERS
    """Concurrent closed-loop callers; in open loop, the arrival sources the rate is split across."""
    arrival_rate: float | None = None
    """Open loop: requests per second offered by all users together (Poisson arrivals, none waiting
    for another's answer); ``None``: closed-loop users."""
    spawn_rate: float | None = None
    """Users started per second; ``None`` starts them all in the first second."""
    run_time_s: float = DEFAULT_RUN_TIME_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    request_pool: int = DEFAULT_REQUEST_POOL
    processes: int = 1
    """Locust processes here: above 1, a master and ``processes`` workers (``-1``: one per core)."""
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    slo: SloSettings = field(default_factory=SloSettings)
    report_dir: Path = Path("loadtest-report")
    live_stats: bool = False
    """Print Locust's stats table every few seconds instead of only at the end."""
    check_target: bool = True
    """Check that the target serves the model before starting the load."""
    extra_locust_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.users < 1:
            raise LoadtestError(f"users must be positive, got {self.users}")
        if self.arrival_rate is not None and not self.arrival_rate > 0:
            raise LoadtestError(f"arrival rate must be positive, got {self.arrival_rate}")
        if self.spawn_rate is not None and self.spawn_rate <= 0:
            raise LoadtestError(f"spawn rate must be positive, got {self.spawn_rate}")
        if self.run_time_s < 1:
            raise LoadtestError(f"run time must be at least 1 s, got {self.run_time_s}")
        if self.request_timeout_s <= 0:
            raise LoadtestError(f"request timeout must be positive, got {self.request_timeout_s}")
        if self.request_pool < 1:
            raise LoadtestError(f"request pool must be positive, got {self.request_pool}")
        if self.processes == 0 or self.processes < -1:
            raise LoadtestError(f"processes must be -1 or positive, got {self.processes}")

    @property
    def verdict_path(self) -> Path:
        return self.report_dir / VERDICT_FILE

    @property
    def html_path(self) -> Path:
        return self.report_dir / HTML_FILE

    @property
    def csv_prefix(self) -> Path:
        return self.report_dir / CSV_PREFIX


@dataclass(frozen=True, kw_only=True)
class LoadtestResult:
    exit_code: int
    """Locust's exit code: 0 within the SLO, 1 when it is violated, other values when Locust failed."""
    verdict: Verdict | None
    """``None`` when Locust ended before judging the run (see its output)."""
    report_dir: Path


def locust_command(settings: LoadtestSettings) -> list[str]:
    """The ``python -m locust`` command line the settings describe."""
    w = settings.workload
    spawn_rate = settings.spawn_rate if settings.spawn_rate is not None else float(settings.users)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile_path()),
        "--headless",
        "--users",
        str(settings.users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        f"{max(1, round(settings.run_time_s))}s",
        "--host",
        settings.target,
        "--stop-timeout",
        f"{settings.request_timeout_s:g}",
        "--csv",
        str(settings.csv_prefix),
        "--html",
        str(settings.html_path),
        "--model",
        settings.model,
        "--request-timeout-s",
        f"{settings.request_timeout_s:g}",
        "--candidates",
        str(w.candidates),
        "--query-words",
        str(w.query_words),
        "--document-words",
        str(w.document_words),
        "--languages",
        ",".join(w.effective_languages),
        "--seed",
        str(w.seed),
        "--request-pool",
        str(settings.request_pool),
        "--slo-p95-ms",
        f"{settings.slo.p95_ms:g}",
        "--slo-max-failure-ratio",
        f"{settings.slo.max_failure_ratio:g}",
        "--slo-report",
        str(settings.verdict_path),
    ]
    if settings.arrival_rate is not None:
        command += ["--arrival-rate", f"{settings.arrival_rate:g}"]
    if not settings.live_stats:
        command.append("--only-summary")
    if settings.processes != 1:
        command += ["--processes", str(settings.processes)]
    command += list(settings.extra_locust_args)
    return command


def check_target(target: str, model: str, *, timeout_s: float = 10.0) -> None:
    """Raise :class:`TargetUnavailableError` unless ``target`` serves ``model`` and it is ready."""
    from reranker_client import RerankerClient, RerankerError

    try:
        with RerankerClient(target, model=model, timeout=timeout_s) as client:
            if client.is_live(timeout=timeout_s) and client.is_ready(timeout=timeout_s):
                return
            reachable = client.is_live(timeout=timeout_s)
    except (RerankerError, ValueError) as exc:
        raise TargetUnavailableError(f"cannot check {target}: {exc}") from exc
    if not reachable:
        raise TargetUnavailableError(f"no Triton server answers at {target}")
    raise TargetUnavailableError(f"model {model!r} is not ready on {target}")


def run_loadtest(
    settings: LoadtestSettings,
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    env: dict[str, str] | None = None,
) -> LoadtestResult:
    """Run Locust headless against ``settings.target`` and return its exit code and SLO verdict.

    Locust's output goes to this process's stdout/stderr unless redirected.
    """
    if settings.check_target:
        check_target(settings.target, settings.model)
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    settings.verdict_path.unlink(missing_ok=True)  # a stale verdict must not pass for this run's
    child_env = dict(os.environ if env is None else env)
    # The workload text is multilingual; make Locust's own output UTF-8 whatever the locale.
    child_env.setdefault("PYTHONIOENCODING", "utf-8")
    exit_code = _run_own_group(locust_command(settings), stdout=stdout, stderr=stderr, env=child_env)
    verdict = Verdict.read(settings.verdict_path) if settings.verdict_path.exists() else None
    return LoadtestResult(exit_code=exit_code, verdict=verdict, report_dir=settings.report_dir)


LEFTOVER_GRACE_S = 5.0


def _run_own_group(command: list[str], *, stdout: int | None, stderr: int | None, env: dict[str, str]) -> int:
    """Run Locust in a process group of its own, and stop what is left of it when it exits.

    With ``--processes``, Locust forks its workers; a worker that outlives its master (seen on a
    loaded machine) would keep running and hold the output pipes open, so a caller reading them
    would wait forever. Ctrl-C is passed on to the whole group, so Locust still writes its stats.
    """
    process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, start_new_session=True)

    def stop_leftovers() -> None:
        process.wait()
        threading.Event().wait(LEFTOVER_GRACE_S)  # workers normally leave with their master
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    threading.Thread(target=stop_leftovers, name="locust-leftovers", daemon=True).start()
    try:
        process.communicate()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGINT)
        process.communicate()
        raise
    return process.returncode


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    """Split ``argv`` at ``--``: our options before it, Locust's own after it."""
    args = list(argv)
    if "--" in args:
        at = args.index("--")
        return args[:at], tuple(args[at + 1 :])
    return args, ()
