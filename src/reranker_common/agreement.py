"""How closely two rankings of the same candidates agree: the one definition the export gates
(FP16, INT8) and ``reranker-eval`` share.

Both measures compare scores per query (one row of candidates each) and average over queries.
numpy is the distribution's own dependency; scipy (Kendall's tau-b) is imported when used and
comes with the ``export`` and ``eval`` extras.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.floating] | Sequence[float]


def top_k(scores: Scores, k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first; ties go to the lower index."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k].tolist()


def top_k_overlap(reference: Scores, candidate: Scores, k: int) -> float:
    """|top-k(reference) ∩ top-k(candidate)| / min(k, number of candidates)."""
    size = min(k, len(reference))
    if size == 0:
        return 1.0
    return len(set(top_k(reference, size)) & set(top_k(candidate, size))) / size


def kendall_tau(reference: Scores, candidate: Scores) -> float:
    """Kendall's tau-b of the two orders; 1.0 when both sides are constant (nothing to disagree on)."""
    from scipy.stats import kendalltau

    if len(reference) < 2:
        return 1.0
    tau = kendalltau(np.asarray(reference), np.asarray(candidate)).statistic
    return 1.0 if np.isnan(tau) else float(tau)


@dataclass(frozen=True)
class Agreement:
    """Means over queries."""

    queries: int
    k: int
    top_k_overlap: float
    kendall_tau: float


def agreement(reference: Sequence[Scores], candidate: Sequence[Scores], *, k: int = 5) -> Agreement:
    """Per-query top-k overlap and Kendall tau, averaged; rows are queries, columns their candidates."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference queries but {len(candidate)} candidate queries")
    overlaps, taus = [], []
    for ref, cand in zip(reference, candidate, strict=True):
        if len(ref) != len(cand):
            raise ValueError(f"a query has {len(ref)} reference scores but {len(cand)} candidate scores")
        overlaps.append(top_k_overlap(ref, cand, k))
        taus.append(kendall_tau(ref, cand))
    if not overlaps:
        return Agreement(queries=0, k=k, top_k_overlap=1.0, kendall_tau=1.0)
    return Agreement(
        queries=len(overlaps), k=k, top_k_overlap=float(np.mean(overlaps)), kendall_tau=float(np.mean(taus))
    )
