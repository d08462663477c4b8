"""The reference stack the benchmark compares against: FastAPI + FlagReranker + uvicorn, and its launcher.

This is the service the usual guides for bge-reranker-v2-m3 describe (the "seed recipe"): a
``POST /v1/rerank`` endpoint wrapping FlagEmbedding's ``FlagReranker.compute_score``
(PyTorch), served by uvicorn. It is kept plain on purpose, but configured fairly: the same
weights, the same ``max_length``, every core for PyTorch, FP16 on a GPU.

Run it::

    reranker-bench reference-server --model DIR --port 8080

Requests ``{"query": str, "documents": [str], "top_n": int | null, "normalize": bool}``;
responses ``{"scores": [float] (input order), "results": [{"index", "relevance_score"}]}``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from reranker_common import free_port

from .errors import BenchmarkError

REFERENCE_SUBCOMMAND = "reference-server"
RERANK_PATH = "/v1/rerank"
HEALTH_PATH = "/health"


# Module level: FastAPI resolves the endpoint's (string) annotations in the module's globals.
class RerankBody(BaseModel):
    query: str
    documents: list[str] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    normalize: bool = False


class Result(BaseModel):
    index: int
    relevance_score: float


class RerankResponse(BaseModel):
    scores: list[float]
    """One score per document, in input order (raw logits unless ``normalize``)."""
    results: list[Result]
    """Best first, at most ``top_n``."""


class Scheduling(str, Enum):
    """How concurrent requests reach the model."""

    SERIAL = "serial"
    """One ``compute_score`` at a time (a lock); PyTorch's intra-op threads use every core."""
    THREADPOOL = "threadpool"
    """FastAPI's thread pool runs ``compute_score`` calls side by side (sync endpoint, no lock)."""


@dataclass(frozen=True, kw_only=True)
class ReferenceSettings:
    model_dir: Path
    device: str = "cpu"
    """``cpu`` or a CUDA device such as ``cuda:0``."""
    fp16: bool = False
    """Half precision (what the guides use on a GPU; FlagReranker ignores it on CPU)."""
    threads: int | None = None
    """PyTorch intra-op threads; ``None`` means every core of the machine."""
    max_length: int = 512
    batch_size: int = 128
    scheduling: Scheduling = Scheduling.SERIAL

    @property
    def effective_threads(self) -> int:
        return self.threads if self.threads is not None else (os.cpu_count() or 1)

    def check(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise BenchmarkError(f"{self.model_dir} is not a Hugging Face model directory (no config.json)")


def create_app(settings: ReferenceSettings) -> Any:
    """The FastAPI application; the model loads when the app starts (lifespan)."""
    # Imported here so that importing this module stays cheap (the launcher only needs its settings).
    import torch
    from fastapi import FastAPI, HTTPException
    from FlagEmbedding import FlagReranker

    state: dict[str, Any] = {}
    lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.effective_threads)
        state["reranker"] = FlagReranker(
            str(settings.model_dir),
            use_fp16=settings.fp16,
            devices=[settings.device],
            max_length=settings.max_length,
            batch_size=settings.batch_size,
        )
        yield
        state.clear()

    app = FastAPI(title="reference reranker (FlagReranker)", lifespan=lifespan)

    @app.get(HEALTH_PATH)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # A sync endpoint: FastAPI runs it in its thread pool, so the event loop stays free.
    @app.post(RERANK_PATH, response_model=RerankResponse)
    def rerank(body: RerankBody) -> RerankResponse:
        reranker = state.get("reranker")
        if reranker is None:
            raise HTTPException(status_code=503, detail="model not loaded")
        pairs = [[body.query, doc] for doc in body.documents]
        if settings.scheduling is Scheduling.SERIAL:
            with lock:
                scores = reranker.compute_score(pairs, normalize=body.normalize)
        else:
            scores = reranker.compute_score(pairs, normalize=body.normalize)
        scores = [float(s) for s in (scores if isinstance(scores, list) else [scores])]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n]
        return RerankResponse(scores=scores, results=[Result(index=i, relevance_score=scores[i]) for i in order])

    return app


def serve(settings: ReferenceSettings, *, host: str, port: int) -> None:
    """Run the reference server in this process until it is stopped."""
    import uvicorn

    settings.check()
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@dataclass(frozen=True)
class RunningReference:
    url: str
    """Base URL, ``http://127.0.0.1:PORT``."""
    pid: int


def server_command(settings: ReferenceSettings, *, host: str, port: int) -> list[str]:
    """The command line that serves ``settings`` (``python -m reranker_bench reference-server ...``)."""
    command = [
        sys.executable,
        "-m",
        "reranker_bench",
        REFERENCE_SUBCOMMAND,
        "--model",
        str(settings.model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--device",
        settings.device,
        "--scheduling",
        settings.scheduling.value,
        "--max-length",
        str(settings.max_length),
    ]
    if settings.threads is not None:
        command += ["--threads", str(settings.threads)]
    if settings.fp16:
        command.append("--fp16")
    return command


@contextlib.contextmanager
def reference_server(
    model_dir: Path,
    *,
    device: str,
    fp16: bool,
    threads: int,
    scheduling: Scheduling,
    log_path: Path,
    max_length: int = 512,
    startup_timeout_s: float = 300.0,
) -> Iterator[RunningReference]:
    """Start the FastAPI + FlagReranker server on a free loopback port; yield its URL and pid."""
    port = free_port()
    settings = ReferenceSettings(
        model_dir=model_dir, device=device, fp16=fp16, threads=threads, max_length=max_length, scheduling=scheduling
    )
    command = server_command(settings, host="127.0.0.1", port=port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
                last = lines[-1].strip() if lines else "no output"
                raise BenchmarkError(f"reference server exited with {process.returncode}: {last} (log: {log_path})")
            try:
                with urllib.request.urlopen(f"{base_url}{HEALTH_PATH}", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError(f"reference server not up after {startup_timeout_s:g} s (log: {log_path})")
            time.sleep(0.5)  # polling interval while the server starts, bounded by the deadline
        yield RunningReference(url=base_url, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
