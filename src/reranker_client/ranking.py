"""Pure helpers: sigmoid, top-n selection, splitting a candidate list into requests."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One ranked document: its position in the input list, its score, and (optionally) its text."""

    index: int
    score: float
    document: str | None = None


def sigmoid(scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``1 / (1 + exp(-x))`` in float64, as FlagReranker's ``normalize=True``, never overflowing.

    float64 (FlagReranker returns Python floats) keeps distinct logits distinct: in float32 every
    logit above ~17 would round to 1.0 and tie.
    """
    x = np.asarray(scores, dtype=np.float64)
    # exp(-log(1 + exp(-x))) is the same function, and logaddexp never overflows.
    return np.exp(-np.logaddexp(0.0, -x))


def top_n_indices(scores: npt.ArrayLike, top_n: int | None = None) -> npt.NDArray[np.intp]:
    """Indices of the ``top_n`` best scores: score descending, ties by ascending index.

    Selects by partition (O(N)) and sorts only the selected ``top_n``. NaN ranks last.
    """
    values = np.asarray(scores)
    if values.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {values.shape}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    count = values.shape[0]
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}")
    n = count if top_n is None else min(top_n, count)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    key = np.negative(values)
    nan = np.isnan(key)
    if nan.any():
        key[nan] = np.inf
    if n == count:
        return np.argsort(key, kind="stable")
    # The n-th best key; argpartition alone would pick an arbitrary subset of the ties at the
    # boundary, so take everything strictly better plus the lowest-indexed ties.
    kth = np.partition(key, n - 1)[n - 1]
    better = np.flatnonzero(key < kth)
    ties = np.flatnonzero(key == kth)[: n - better.shape[0]]
    selected = np.concatenate((better, ties))
    return selected[np.lexsort((selected, key[selected]))]


def rank(
    scores: npt.ArrayLike,
    documents: Sequence[str] | None = None,
    *,
    top_n: int | None = None,
) -> list[RerankResult]:
    """``RerankResult``s for the ``top_n`` best scores; ``documents`` fills ``document`` when given."""
    values = np.asarray(scores)
    order = top_n_indices(values, top_n)
    if documents is None:
        return [RerankResult(index=int(i), score=float(values[i])) for i in order]
    return [RerankResult(index=int(i), score=float(values[i]), document=documents[i]) for i in order]


def chunk_slices(count: int, limit: int | None) -> list[slice]:
    """Split ``count`` documents into the fewest requests of at most ``limit``, sizes within one."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if limit is None or count <= limit:
        return [slice(0, count)]
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    parts = math.ceil(count / limit)
    # Balanced sizes: the requests run concurrently, so the largest one sets the latency.
    base, extra = divmod(count, parts)
    slices = []
    start = 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        slices.append(slice(start, stop))
        start = stop
    return slices


def check_texts(query: object, documents: object) -> list[str]:
    """Fail early with ``TypeError`` unless ``query`` is a str and ``documents`` an iterable of str."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    # A bare string is iterable too, but as documents it is always a mistake.
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
        raise TypeError(f"documents must be an iterable of str, got {type(documents).__name__}")
    texts = list(documents)
    for position, document in enumerate(texts):
        if not isinstance(document, str):
            raise TypeError(f"documents[{position}] must be a str, got {type(document).__name__}")
    return texts
