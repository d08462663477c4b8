"""Where the time of the comparison goes: each part of both stacks, timed in-process (CPU mode)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reranker_common import Progress
from reranker_loadtest.workload import Workload

Breakdown = dict[str, dict[str, float]]
"""Part name -> ``{"wall_s", "cpu_s"}`` medians per request, plus ``tokens_per_request`` -> ``{"real", "padded"}``."""

TOKENS_PER_REQUEST = "tokens_per_request"


def time_breakdown(
    model_dir: Path,
    onnx_path: Path,
    workload: Workload,
    *,
    threads: int,
    max_length: int = 512,
    requests: int = 3,
    sub_batch_rows: int = 8,
    progress: Progress = print,
) -> Breakdown:
    """Median wall and CPU seconds per request of each part of the two stacks, in this process.

    ``flagreranker_compute_score``: the reference's whole call; ``hf_tokenize_pairs``: one
    tokenizer call on the 50 pairs (padding to the longest, as FlagReranker pads);
    ``torch_forward``: one PyTorch forward on that batch; ``onnxruntime_forward``: one
    onnxruntime run of the exported model on the same batch, with the session options of the
    ``cpu`` profile (sequential executor, no spinning); ``onnxruntime_sorted_sub_batches``: the
    same rows sorted by length and run ``sub_batch_rows`` at a time, each sub-batch padded to its
    own longest row (what padding costs). CPU seconds count every thread of this process, so
    other tenants of the machine barely move them.
    """
    import onnxruntime as ort
    import torch
    from FlagEmbedding import FlagReranker

    from reranker_steps.onnx_scoring import session_options, sub_batches

    torch.set_num_threads(threads)
    reranker = FlagReranker(str(model_dir), devices=["cpu"], max_length=max_length)
    session = ort.InferenceSession(
        str(onnx_path), sess_options=session_options(intra_op_threads=threads), providers=["CPUExecutionProvider"]
    )
    input_names = {i.name for i in session.get_inputs()}
    parts: dict[str, list[tuple[float, float]]] = {}
    tokens: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args, **kwargs)
        parts.setdefault(name, []).append((time.perf_counter() - wall, time.process_time() - cpu))
        return value

    def sorted_sub_batches(feed: dict[str, np.ndarray], lengths: np.ndarray) -> None:
        for chunk in sub_batches(lengths, sub_batch_rows):
            width = int(lengths[chunk].max())
            session.run(None, {k: v[chunk, :width] for k, v in feed.items()})

    for index in range(requests + 1):  # request 0 warms every path up and is not counted
        request = workload.request(index)
        progress(f"breakdown: request {index} ({'warm-up' if index == 0 else 'measured'})")
        timed("flagreranker_compute_score", reranker.compute_score, [[request.query, d] for d in request.documents])
        batch = timed(
            "hf_tokenize_pairs",
            reranker.tokenizer,
            [request.query] * len(request.documents),
            list(request.documents),
            padding=True,
            truncation="only_second",
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            timed("torch_forward", reranker.model, **batch)
        feed = {k: v.numpy() for k, v in batch.items() if k in input_names}
        lengths = batch["attention_mask"].numpy().sum(axis=1)
        timed("onnxruntime_forward", session.run, None, feed)
        timed("onnxruntime_sorted_sub_batches", sorted_sub_batches, feed, lengths)
        tokens.setdefault("padded", []).append(float(batch["input_ids"].numel()))
        tokens.setdefault("real", []).append(float(lengths.sum()))
        if index == 0:
            parts.clear()
            tokens.clear()
    result = {
        name: {"wall_s": float(np.median([w for w, _ in v])), "cpu_s": float(np.median([c for _, c in v]))}
        for name, v in parts.items()
    }
    result[TOKENS_PER_REQUEST] = {name: float(np.median(v)) for name, v in tokens.items()}
    return result
