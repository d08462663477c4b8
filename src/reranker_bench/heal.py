"""``reranker-bench heal``: the stub-kill experiment of issue 12, rerun against self-healing replicas.

Each trial starts ``replicas`` ``reranker-serve`` processes (the real command, default healing
policy) on one repository, puts a client with the default retry policy and round-robin over
them under an open-loop load of ``load_share`` of their measured capacity, and SIGKILLs the
python stubs of ``reranker_tokenizer`` and ``reranker_model`` in the first replica (what the
OOM killer does in a memory-limited pod). It measures, from the kill: the first failed direct
probe of that replica, the supervisor's detection and "serving again" lines (stamped when they
arrive), the first passing direct probe, and the client-visible failures of the whole run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reranker_client import LoadBalancing, RerankerClient, RetryPolicy
from reranker_client.config import CORE_MODEL_NAME, TOKENIZER_MODEL_NAME
from reranker_common import Progress
from reranker_serve.supervisor import python_stubs, stub_alive

from .errors import BenchmarkError
from .machine import machine_info

QUERIES = (
    "Which team won the football match on Sunday?",
    "How do I bake bread at home?",
    "What is the capital of France?",
    "When does the train to the airport leave?",
)
DOCUMENTS = (
    "The home side won the match two goals to one after a late penalty.",
    "Knead the dough for ten minutes, let it rise, then bake it for forty minutes.",
    "Paris is the capital and the largest city of France.",
    "Trains to the airport leave every fifteen minutes from platform four.",
    "The museum is closed on Mondays and open late on Thursdays.",
)
LOAD_THREADS = 6  # closed-loop callers that measure the capacity
IN_FLIGHT = 64  # the open loop's threads: requests that hang on a zombie must not hold back the rate
PROBE_PERIOD_S = 0.2
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True, kw_only=True)
class HealSettings:
    repository: Path
    replicas: int = 2
    trials: int = 3
    load_share: float = 0.5
    """Offered load as a share of the replicas' capacity, measured by a closed loop before each kill."""
    settle_s: float = 5.0
    """Load before the kill and after the healed replica serves again."""
    heal_timeout_s: float = 90.0
    output_dir: Path = Path("heal-results")

    def check(self) -> None:
        if not (self.repository / "reranker").is_dir():
            raise BenchmarkError(f"{self.repository} has no 'reranker' ensemble (export a cpu-profile repository)")
        if not 1 <= self.replicas <= 4:
            raise BenchmarkError(f"--replicas must be 1..4, got {self.replicas}")
        if self.trials < 1:
            raise BenchmarkError(f"--trials must be positive, got {self.trials}")
        if not 0 < self.load_share <= 1:
            raise BenchmarkError(f"--load-share must be in (0, 1], got {self.load_share}")


@dataclass(kw_only=True)
class Trial:
    """One kill. Times in seconds from the kill; ``None``: not seen within the heal timeout."""

    capacity_rps: float
    load_rps: float
    killed_stubs: int
    first_failed_probe_s: float | None
    detected_s: float | None
    serving_s: float | None
    answering_s: float | None
    """First passing direct probe of the killed replica after a failed one."""
    requests: int
    failures: int
    failure_examples: list[str] = field(default_factory=list)


def kill_stubs(server_pid: int, *models: str, timeout_s: float = 30.0) -> int:
    """SIGKILL the python backend stubs serving any of ``models`` under ``server_pid``; how many died."""
    stubs = [pid for pid, script in python_stubs(server_pid).items() if any(f"/{model}/" in script for model in models)]
    for pid in stubs:
        os.kill(pid, signal.SIGKILL)
    # Dead at once; until Triton reaps them they are zombies (not our children to wait for).
    deadline, pause = time.monotonic() + timeout_s, threading.Event()
    while any(stub_alive(pid) for pid in stubs):
        if time.monotonic() > deadline:
            raise BenchmarkError(f"the killed stubs of {', '.join(models)} are still running after {timeout_s:g} s")
        pause.wait(0.05)
    return len(stubs)


class _Serve:
    """One ``reranker-serve`` process; its stderr (the supervisor's log) stamped line by line."""

    def __init__(self, repository: Path, log_file: Path) -> None:
        command = [sys.executable, "-m", "reranker_serve", "--model-repository", str(repository)]
        command += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(log_file)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stderr is not None
        printed = []
        for line in self.process.stdout:
            printed.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(printed)
        pid, grpc = re.search(r"\(pid (\d+)\)", text), re.search(r"gRPC:\s+(\S+)", text)
        if pid is None or grpc is None:
            self.stop()
            raise BenchmarkError(f"reranker-serve did not start: {text}{self.process.stderr.read()}")
        self.server_pid, self.grpc_url = int(pid[1]), grpc[1]
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first_line(self, text: str, after: float) -> float | None:
        return next((at for at, line in list(self.lines) if at >= after and text in line), None)

    def save_log(self, path: Path) -> None:
        """reranker-serve's stderr (the supervisor's lines) as it printed them."""
        path.write_text("".join(f"{line}\n" for _, line in self.lines), encoding="utf-8")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(timeout=10)  # the last lines, up to the end of the stream


@contextmanager
def _replicas(settings: HealSettings, trial: int) -> Iterator[list[_Serve]]:
    with ExitStack() as stack:
        started: list[_Serve] = []
        for number in range(settings.replicas):
            name = settings.output_dir / f"trial{trial}-replica{number}"
            serve = _Serve(settings.repository, name.with_suffix(".triton.log"))
            stack.callback(serve.save_log, name.with_suffix(".serve.log"))  # runs after the stop
            stack.callback(serve.stop)
            started.append(serve)
        yield started


def _request(index: int) -> tuple[str, list[str]]:
    return QUERIES[index % len(QUERIES)], [DOCUMENTS[(index + j) % len(DOCUMENTS)] for j in range(2 + index % 3)]


class _Load:
    """Open-loop requests at a fixed rate from a thread pool; failures kept with their message."""

    def __init__(self, client: RerankerClient, rate: float) -> None:
        self.client, self.period = client, 1.0 / rate
        self.requests = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(IN_FLIGHT)
        self._thread = threading.Thread(target=self._issue)

    def _one(self, index: int) -> None:
        try:
            self.client.score(*_request(index))
        except Exception as error:  # whatever reaches the caller counts
            self.failures.append(f"{type(error).__name__}: {error}")

    def _issue(self) -> None:
        while not self._stop.wait(self.period):
            self._pool.submit(self._one, self.requests)
            self.requests += 1

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)


class _Probe:
    """Direct canaries to one replica (no retries), a few times a second: what a caller there sees."""

    def __init__(self, url: str) -> None:
        self.client = RerankerClient(url, retries=RetryPolicy.disabled(), timeout=PROBE_TIMEOUT_S)
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.results.append((started, self.client.canary().healthy))
            self._stop.wait(max(0.0, PROBE_PERIOD_S - (time.monotonic() - started)))

    def __enter__(self) -> _Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def first_failure(self, after: float) -> float | None:
        return next((at for at, healthy in list(self.results) if at >= after and not healthy), None)

    def first_success(self, after: float) -> float | None:
        return next((at for at, healthy in list(self.results) if at >= after and healthy), None)


def _capacity(client: RerankerClient, seconds: float = 3.0) -> float:
    end, done = time.monotonic() + seconds, [0] * LOAD_THREADS

    def loop(worker: int) -> None:
        index = worker
        while time.monotonic() < end:
            client.score(*_request(index))
            index += LOAD_THREADS
            done[worker] += 1

    began = time.monotonic()
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        list(pool.map(loop, range(LOAD_THREADS)))
    return sum(done) / (time.monotonic() - began)


def _since(kill: float, at: float | None) -> float | None:
    return None if at is None else round(at - kill, 2)


def run_trial(settings: HealSettings, number: int, progress: Progress) -> Trial:
    with _replicas(settings, number) as replicas:
        victim = replicas[0]
        target = "ipv4:" + ",".join(r.grpc_url for r in replicas)
        with RerankerClient(target, load_balancing=LoadBalancing.ROUND_ROBIN) as client:  # default retries
            capacity = _capacity(client)
            rate = settings.load_share * capacity
            progress(f"trial {number}: capacity {capacity:.1f} requests/s, offering {rate:.1f}")
            pause = threading.Event()
            with _Load(client, rate) as load, _Probe(victim.grpc_url) as probe:
                pause.wait(settings.settle_s)  # steady load before the fault
                kill = time.monotonic()
                killed = kill_stubs(victim.server_pid, TOKENIZER_MODEL_NAME, CORE_MODEL_NAME)
                progress(f"trial {number}: killed {killed} stubs of replica 0 (server pid {victim.server_pid})")
                deadline = kill + settings.heal_timeout_s
                while victim.first_line("serving again", kill) is None and time.monotonic() < deadline:
                    if victim.process.poll() is not None:
                        break  # reranker-serve gave up
                    pause.wait(0.2)
                pause.wait(settings.settle_s)  # the healed replica back in the rotation
            detected = victim.first_line("not serving", kill)
            serving = victim.first_line("serving again", kill)
            first_failure = probe.first_failure(kill)
            answering = probe.first_success(first_failure) if first_failure is not None else None
    trial = Trial(
        capacity_rps=round(capacity, 1),
        load_rps=round(rate, 1),
        killed_stubs=killed,
        first_failed_probe_s=_since(kill, first_failure),
        detected_s=_since(kill, detected),
        serving_s=_since(kill, serving),
        answering_s=_since(kill, answering),
        requests=load.requests,
        failures=len(load.failures),
        failure_examples=sorted(set(load.failures))[:3],
    )
    progress(
        f"trial {number}: detected {trial.detected_s} s, serving again {trial.serving_s} s after the kill; "
        f"{trial.failures} of {trial.requests} requests failed"
    )
    return trial


def run(settings: HealSettings, progress: Progress) -> dict[str, Any]:
    """Every trial, and the summary the docs quote; written to ``output_dir/heal.json``."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    trials = [run_trial(settings, number, progress) for number in range(1, settings.trials + 1)]

    def median(name: str) -> float | None:
        values = [getattr(t, name) for t in trials if getattr(t, name) is not None]
        return round(statistics.median(values), 2) if values else None

    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "machine": machine_info(),
        "trials": [asdict(t) for t in trials],
        "median": {n: median(n) for n in ("first_failed_probe_s", "detected_s", "serving_s", "answering_s")},
        "healed_within_30s": all(t.serving_s is not None and t.serving_s <= 30 for t in trials),
        "client_failures": sum(t.failures for t in trials),
        "client_requests": sum(t.requests for t in trials),
    }
    (settings.output_dir / "heal.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def format_report(report: dict[str, Any]) -> str:
    rows = [
        "| trial | load (req/s) | first failed probe | detected | serving again | probe passes | client failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, t in enumerate(report["trials"], start=1):
        rows.append(
            f"| {number} | {t['load_rps']} of {t['capacity_rps']} | {t['first_failed_probe_s']} s | "
            f"{t['detected_s']} s | {t['serving_s']} s | {t['answering_s']} s | {t['failures']} of {t['requests']} |"
        )
    m = report["median"]
    rows.append(
        f"| median | | {m['first_failed_probe_s']} s | {m['detected_s']} s | {m['serving_s']} s | "
        f"{m['answering_s']} s | {report['client_failures']} of {report['client_requests']} |"
    )
    return "\n".join(rows)
