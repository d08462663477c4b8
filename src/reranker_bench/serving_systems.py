"""The two systems of the serving breakdown: the served ensemble with its statistics, and the naive run.

:class:`TritonCaller` sends one request to the ``reranker`` ensemble and reads Triton's
per-model statistics; :class:`NaiveReference` scores the same pairs in-process with the
Hugging Face tokenizer and one onnxruntime session on the same ``model.onnx``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reranker_client.config import DOCUMENTS, ENSEMBLE_NAME, QUERY, SCORES, TOKENIZER_MODEL_NAME
from reranker_export.settings import CORE_MODEL_NAME

from .errors import BenchmarkError

STAT_KINDS = ("queue", "compute_input", "compute_infer", "compute_output")
"""Triton's per-model inference statistics a request is split into (``compute_*``: the step's own time)."""

Stats = dict[str, dict[str, int]]
"""Model name -> cumulative ns per kind of :data:`STAT_KINDS` and ``success``, plus ``requests`` and ``executions``."""


@dataclass(frozen=True)
class Request:
    query: str
    documents: tuple[str, ...]


def stats_ns(client: Any) -> Stats:
    """Cumulative ns per model and kind (plus ``requests``) from Triton's statistics."""
    result: Stats = {}
    for stats in client.get_inference_statistics(as_json=True)["model_stats"]:
        inference = stats.get("inference_stats", {})
        entry = {kind: int(inference.get(kind, {}).get("ns", 0)) for kind in STAT_KINDS}
        entry["success"] = int(inference.get("success", {}).get("ns", 0))
        entry["requests"] = int(inference.get("success", {}).get("count", 0))
        entry["executions"] = int(stats.get("execution_count", 0))
        result[stats["name"]] = entry
    return result


class TritonCaller:
    """One ``tritonclient.grpc`` client: the ensemble's scores and the client-observed seconds per request."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def __call__(self, request: Request) -> tuple[np.ndarray, float]:
        g = self._grpc
        query = np.array([request.query.encode()], dtype=np.object_)
        documents = np.array([d.encode() for d in request.documents], dtype=np.object_)
        inputs = [g.InferInput(QUERY, [1], "BYTES"), g.InferInput(DOCUMENTS, [len(documents)], "BYTES")]
        inputs[0].set_data_from_numpy(query)
        inputs[1].set_data_from_numpy(documents)
        outputs = [g.InferRequestedOutput(SCORES)]
        started = time.perf_counter()
        result = self.client.infer(ENSEMBLE_NAME, inputs, outputs=outputs, client_timeout=60)
        scores = result.as_numpy(SCORES)
        elapsed = time.perf_counter() - started
        return np.asarray(scores), elapsed

    def stats(self) -> Stats:
        return stats_ns(self.client)

    def stats_after(self, requests: int, timeout_s: float = 10.0) -> Stats:
        """Statistics once every step has recorded ``requests`` requests in all.

        Triton records a model's statistics after its reply is sent, so a read right after the
        reply can miss the last request; poll until each step has counted every request sent.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            counts = {stats[m]["requests"] for m in (ENSEMBLE_NAME, TOKENIZER_MODEL_NAME, CORE_MODEL_NAME)}
            if counts == {requests}:
                return stats
            if max(counts) > requests:
                raise BenchmarkError("another client is using the benchmark's Triton server")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"Triton's statistics did not record the request within {timeout_s:g} s")

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class NaiveTiming:
    scores: np.ndarray
    tokenizer_s: float
    onnxruntime_s: float
    feed: dict[str, np.ndarray]
    """The onnxruntime inputs, padded to the longest pair."""


class NaiveReference:
    """The same pairs, in-process: HF tokenizer + one onnxruntime session, FlagReranker semantics."""

    def __init__(self, model_dir: Path, onnx_path: Path, max_length: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from reranker_steps.onnx_scoring import session_options

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.max_length = max_length
        # The session options of the served model (the reranker_model step's defaults), so the
        # comparison isolates serving overhead rather than onnxruntime tuning.
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, request: Request) -> NaiveTiming:
        started = time.perf_counter()
        # Queries here are short, so query truncation (FlagReranker's query_max_length) never bites.
        encoded = self.tokenizer(
            [request.query] * len(request.documents),
            list(request.documents),
            truncation="only_second",
            max_length=self.max_length,
            padding=True,
            return_tensors="np",
        )
        feed = {name: encoded[name].astype(np.int64) for name in self.input_names}
        tokenized = time.perf_counter()
        (logits,) = self.session.run(None, feed)
        done = time.perf_counter()
        return NaiveTiming(
            scores=np.asarray(logits).reshape(-1),
            tokenizer_s=tokenized - started,
            onnxruntime_s=done - tokenized,
            feed=feed,
        )

    def time_padded(self, feed: dict[str, np.ndarray], width: int) -> float:
        """Seconds of one onnxruntime run on ``feed`` padded to ``width`` (the served batch's shape)."""
        extra = width - feed["input_ids"].shape[1]
        pad = {"input_ids": int(self.tokenizer.pad_token_id)}
        wide = {name: np.pad(a, ((0, 0), (0, extra)), constant_values=pad.get(name, 0)) for name, a in feed.items()}
        started = time.perf_counter()
        self.session.run(None, wide)
        return time.perf_counter() - started
