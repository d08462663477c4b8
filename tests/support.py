"""Helpers shared by the tests (importable as ``support``; fixtures live in conftest.py)."""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
import time
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from reranker_export.settings import Profile, ServingSettings, TokenizerSettings

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


@functools.cache
def lock_pins(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of a pip-compile lock (``name==version`` lines)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+?)(?: \\)?", line)
            assert match, f"{path.name}: not an exact pin: {line!r}"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


# Window mode in the shared window repository: stride, and how long its model step waits for
# concurrent requests to merge into one batch.
WINDOW_STRIDE = 32
WINDOW_MERGE_DELAY_US = 300_000

# Small but real settings for the tiny models: short buckets keep the CPU work low.
TEST_TOKENIZER = TokenizerSettings(max_length=128, length_buckets=(32, 64, 128), max_documents=64)


def serving_settings(profile: Profile = Profile.CPU, **overrides: Any) -> ServingSettings:
    """Test serving settings; ``tokenizer=`` or tokenizer fields (``max_documents=16``) override."""
    tokenizer_fields = {f.name for f in dataclasses.fields(TokenizerSettings)}
    tok_overrides = {k: overrides.pop(k) for k in list(overrides) if k in tokenizer_fields}
    tokenizer = overrides.pop("tokenizer", dataclasses.replace(TEST_TOKENIZER, **tok_overrides))
    overrides.setdefault("max_batch_size", max(64, tokenizer.max_documents))
    overrides.setdefault("tokenizer_instances", 1)
    overrides.setdefault("max_queue_delay_us", 2000)
    return ServingSettings(profile=profile, tokenizer=tokenizer, **overrides)


def rerender_cpu_repository(exported: Path, output: Path, **overrides: Any) -> Path:
    """A ``cpu`` repository with other serving settings around an XLM-R export's files.

    Only the configs differ from ``exported``; the export and its validation are not repeated.
    """
    from reranker_export.repository import ModelFiles, ModelSignature, render_repository

    files = ModelFiles(
        onnx_path=exported / "reranker_model" / "1" / "model.onnx",
        tokenizer_json=exported / "reranker_tokenizer" / "1" / "tokenizer.json",
    )
    return render_repository(output, serving_settings(**overrides), signature=ModelSignature(), files=files)


def export_cpu_repository(model_dir: Path, output: Path, **overrides: Any) -> Path:
    """Export ``model_dir`` into a ``cpu``-profile repository at ``output`` (FP32, validated)."""
    from reranker_export.pipeline import ExportSettings, export_model

    result = export_model(
        ExportSettings(model=str(model_dir), output=output, serving=serving_settings(**overrides), force=True)
    )
    return result.repository


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    requests: int
    """Answered, with success or failure."""
    executions: int


def model_counts(client: Any, model: str, *, at_least: int = 0, timeout_s: float = 60.0) -> ModelCounts:
    """``model``'s request and execution counts, once it has counted ``at_least`` requests.

    Triton records a request's statistics after sending its reply, so a read right after the
    last reply can miss it: read again, a few times a second, until the count is there.
    """
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        inference = stats["inference_stats"]
        counts = ModelCounts(
            requests=sum(int(inference[k].get("count", 0)) for k in ("success", "fail")),
            executions=int(stats.get("execution_count", 0)),
        )
        if counts.requests >= at_least or time.monotonic() > deadline:
            return counts
        pause.wait(0.05)  # never wakes early: a pause between reads, not a synchronisation


@dataclasses.dataclass
class RunningGateway:
    """A ``reranker-gateway`` subprocess: its base URL and its log."""

    url: str
    process: Any
    log_path: Path

    def stop(self) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def start_gateway(triton_url: str, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> RunningGateway:
    """Start ``reranker-gateway --triton triton_url ARGS`` on a free port; return once ``/livez`` answers."""
    import os
    import subprocess
    import sys

    import httpx

    from reranker_common import free_port

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"gateway-{port}.log"
    command = [sys.executable, "-m", "reranker_gateway", "--triton", triton_url, "--port", str(port), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    gateway = RunningGateway(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + 60
    pause = threading.Event()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{gateway.url}/livez", timeout=2).status_code == 200:
                return gateway
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            gateway.stop()
            raise RuntimeError(f"the gateway did not answer within 60 s: {log_path.read_text()[-2000:]}")
        pause.wait(0.1)  # a pause between probes, not a synchronisation
