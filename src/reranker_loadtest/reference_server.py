"""The reference stack the benchmark compares against: FastAPI + FlagReranker + uvicorn.

This is the service the usual guides for bge-reranker-v2-m3 describe: a ``POST
/v1/rerank`` endpoint wrapping FlagEmbedding's ``FlagReranker.compute_score``
(PyTorch), served by uvicorn. It is kept plain on purpose, but configured fairly:
the same weights, the same ``max_length``, every core for PyTorch, FP16 on a GPU.

Run it::

    python -m reranker_loadtest.reference_server --model DIR --port 8080

Requests ``{"query": str, "documents": [str], "top_n": int | null, "normalize": bool}``;
responses ``{"scores": [float] (input order), "results": [{"index", "relevance_score"}]}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

PROG = "python -m reranker_loadtest.reference_server"


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


def create_app(settings: ReferenceSettings) -> Any:
    """The FastAPI application; the model loads when the app starts (lifespan)."""
    # Imported here so that importing this module stays cheap (the benchmark only needs its path).
    import torch
    from fastapi import FastAPI, HTTPException
    from FlagEmbedding import FlagReranker

    state: dict[str, Any] = {}
    lock = threading.Lock()

    @asynccontextmanager
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

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # A sync endpoint: FastAPI runs it in its thread pool, so the event loop stays free.
    @app.post("/v1/rerank", response_model=RerankResponse)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reference reranker: FastAPI POST /v1/rerank over FlagReranker, served by uvicorn.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: every core)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--scheduling",
        choices=[s.value for s in Scheduling],
        default=Scheduling.SERIAL.value,
        help="serial: one compute_score at a time; threadpool: concurrent calls in FastAPI's thread pool",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(
            f"{PROG}: error: {args.model} is not a Hugging Face model directory (no config.json)",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    settings = ReferenceSettings(
        model_dir=args.model,
        device=args.device,
        fp16=args.fp16,
        threads=args.threads,
        max_length=args.max_length,
        scheduling=Scheduling(args.scheduling),
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
