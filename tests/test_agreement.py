"""The ranking-agreement measures the export gates and reranker-eval share."""

from __future__ import annotations

import pytest

from reranker_common.agreement import agreement, kendall_tau, top_k, top_k_overlap


def test_top_k_breaks_ties_by_index() -> None:
    assert top_k([0.5, 0.9, 0.5, 0.9], 3) == [1, 3, 0]


def test_identical_and_reversed_rankings() -> None:
    scores = [0.1, 0.7, 0.3, 0.9, 0.5, 0.2]
    assert top_k_overlap(scores, scores, 5) == 1.0 and kendall_tau(scores, scores) == pytest.approx(1.0)
    reversed_scores = [-s for s in scores]
    assert kendall_tau(scores, reversed_scores) == pytest.approx(-1.0)
    # top-3 of 6 reversed share nothing
    assert top_k_overlap(scores, reversed_scores, 3) == 0.0


def test_agreement_averages_over_queries_and_checks_shapes() -> None:
    same = [0.1, 0.2, 0.3]
    swapped = [0.2, 0.1, 0.3]  # one discordant pair of three
    result = agreement([same, same], [same, swapped], k=1)
    assert result.queries == 2 and result.top_k_overlap == 1.0
    assert result.kendall_tau == pytest.approx((1.0 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="2 reference scores but 3"):
        agreement([[1.0, 2.0]], [[1.0, 2.0, 3.0]])
