"""Send an eval set through deployments and measure the rankings: ir-measures for the ranking
measures, ``reranker_common.agreement`` for how deployments agree.

Rankings are turned into runs with strictly decreasing scores (``n - position``) before they reach
ir-measures: its providers break equal scores by document id (pytrec_eval one way, the MS MARCO
provider the other), while here equal reranker scores keep the first-stage order, as
``reranker_common.agreement.top_k`` does.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from reranker_client import RerankerError
from reranker_common import Progress
from reranker_common.agreement import agreement, top_k

from .dataset import EvalQuery, EvalSet
from .deployments import Deployment
from .errors import DatasetError, EvalError, ScoringError

__all__ = [
    "FIRST_STAGE",
    "MEASURES",
    "EvalReport",
    "PairAgreement",
    "SystemResult",
    "check_measurable",
    "evaluate",
    "measure",
    "ndcg_gate",
    "rerank_order",
]

PROGRESS_EVERY_S = 10.0

FIRST_STAGE = "first-stage"
"""The name of the candidates' own order in the report."""

MEASURES: dict[str, ir_measures.Measure] = {
    "nDCG@10": nDCG @ 10,
    "Recall@1": R @ 1,
    "Recall@3": R @ 3,
    "Recall@5": R @ 5,
    "Recall@10": R @ 10,
    "MRR@10": RR @ 10,
}
"""Report name -> ir-measures measure (pytrec_eval computes nDCG and R, the MS MARCO provider RR).
Recall and MRR count relevance >= 1 as relevant; nDCG uses the grades as gains."""


def rerank_order(scores: Sequence[float] | np.ndarray) -> list[int]:
    """Candidate positions, best score first; equal scores keep the first-stage order."""
    return top_k(scores, len(scores))


def measure(
    qrels: Mapping[str, Mapping[str, int]], rankings: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Per-query values of :data:`MEASURES`: ``{measure name: {query id: value}}``.

    ``rankings`` holds each query's document ids, best first. Only queries in both are measured.
    """
    run = {qid: {doc: float(len(docs) - pos) for pos, doc in enumerate(docs)} for qid, docs in rankings.items()}
    names = {measure: name for name, measure in MEASURES.items()}
    values: dict[str, dict[str, float]] = {name: {} for name in MEASURES}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), qrels, run):
        values[names[metric.measure]][metric.query_id] = float(metric.value)
    return values


@dataclass(frozen=True)
class SystemResult:
    """The measures of one ranking of the candidates: the first stage's or a deployment's."""

    name: str
    address: str | None
    """Where the deployment is; ``None`` for the first stage."""
    measures: dict[str, float]
    """Means over the judged queries, by name (:data:`MEASURES`)."""


@dataclass(frozen=True)
class PairAgreement:
    """How two deployments agree: their scores over every scored query, their nDCG@10 over the judged ones."""

    reference: str
    candidate: str
    queries: int
    k: int
    top_k_overlap: float
    kendall_tau: float
    ndcg_change: float | None
    """Mean of candidate minus reference nDCG@10 per judged query; ``None`` without judged queries."""
    queries_worse: int
    """Judged queries whose nDCG@10 is lower with the candidate."""
    queries_better: int
    p_value: float | None
    """Two-sided paired t-test of the per-query nDCG@10; ``None`` when the differences do not vary."""
    most_worse: tuple[str, ...]
    """Up to five query ids with the largest nDCG@10 drops, largest first: where to look."""


@dataclass(frozen=True)
class EvalReport:
    dataset: str
    format: str
    queries: int
    """Queries sent to every deployment."""
    judged: int
    """Queries with a relevant document: the ones the measures average over."""
    candidates: int
    """Candidates over all queries (each deployment scored this many pairs)."""
    systems: tuple[SystemResult, ...]
    """The first stage first, then the deployments in the order given."""
    agreement: tuple[PairAgreement, ...]
    """Every pair of deployments, the earlier one as the reference."""
    notes: tuple[str, ...] = ()
    measures: dict[str, str] = field(default_factory=lambda: {name: str(m) for name, m in MEASURES.items()})
    """Report name -> the ir-measures measure behind it."""


@dataclass
class _Collected:
    doc_ids: dict[str, list[str]] = field(default_factory=dict)
    qrels: dict[str, Mapping[str, int]] = field(default_factory=dict)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def _score(query: EvalQuery, deployments: Sequence[Deployment]) -> dict[str, list[float]]:
    documents = [candidate.text for candidate in query.candidates]
    scores = {}
    for deployment in deployments:
        try:
            values = deployment.score(query.text, documents)
        except (RerankerError, EvalError) as exc:
            raise ScoringError(
                f"deployment {deployment.name!r} ({deployment.address}) failed on query {query.query_id!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if len(values) != len(documents):
            raise ScoringError(
                f"deployment {deployment.name!r} returned {len(values)} scores for {len(documents)} documents"
            )
        scores[deployment.name] = [float(v) for v in values]
    return scores


def _bounded(
    queries: Iterable[EvalQuery], deployments: Sequence[Deployment], workers: int
) -> Iterator[tuple[EvalQuery, dict[str, list[float]]]]:
    """Score queries on ``workers`` threads, at most ``2 * workers`` in flight (the set streams), in order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reranker-eval") as pool:
        pending: deque[tuple[EvalQuery, Future[dict[str, list[float]]]]] = deque()
        try:
            for query in queries:
                pending.append((query, pool.submit(_score, query, deployments)))
                if len(pending) >= 2 * workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def check_measurable(dataset: EvalSet, deployments: int) -> None:
    """Raise ``DatasetError`` when the run could report nothing: no judged query and no pair to compare."""
    if dataset.judged == 0 and deployments < 2:
        raise DatasetError(
            f"{dataset.name}: no query has a relevant document, so there is nothing to measure "
            "(add relevance judgments, or give two deployments to measure their agreement)"
        )


def evaluate(
    dataset: EvalSet,
    deployments: Sequence[Deployment],
    *,
    concurrency: int = 4,
    agreement_k: int = 5,
    progress: Progress | None = None,
) -> EvalReport:
    """Score every query of ``dataset`` on every deployment; measure the first stage and each deployment.

    ``concurrency`` queries are in flight at once (each deployment's client further splits long
    candidate lists over the server's document limit). Raises ``ScoringError`` when a deployment
    fails, ``DatasetError`` when there is nothing to measure.
    """
    names = [d.name for d in deployments]
    if not deployments:
        raise ValueError("no deployments to evaluate")
    if len(set(names)) != len(names) or FIRST_STAGE in names:
        raise ValueError(f"deployment names must be distinct and not {FIRST_STAGE!r}: {names}")
    if concurrency < 1 or agreement_k < 1:
        raise ValueError("concurrency and agreement_k must be at least 1")
    check_measurable(dataset, len(deployments))
    say = progress or (lambda _line: None)
    total = len(dataset)
    step = max(1, total // 10)
    last_line = time.monotonic()
    collected = _Collected(scores={name: {} for name in names})
    say(f"scoring {total} queries of {dataset.name} on {len(deployments)} deployment(s): {', '.join(names)}")
    pairs = 0
    for count, (query, scores) in enumerate(_bounded(dataset, deployments, concurrency), start=1):
        collected.doc_ids[query.query_id] = [c.doc_id for c in query.candidates]
        if query.judged:
            collected.qrels[query.query_id] = query.qrels
        for name, values in scores.items():
            collected.scores[name][query.query_id] = values
        pairs += len(query.candidates)
        # A line per tenth of the set, and at least every PROGRESS_EVERY_S on large sets.
        if count % step == 0 or count == total or time.monotonic() - last_line > PROGRESS_EVERY_S:
            last_line = time.monotonic()
            bar = "#" * (20 * count // max(total, 1))
            say(f"[{bar:<20}] {count}/{total} queries, {pairs} pairs scored per deployment")
    return _report(dataset, deployments, collected, pairs=pairs, agreement_k=agreement_k)


def _paired(
    reference: Mapping[str, float], candidate: Mapping[str, float]
) -> tuple[float | None, int, int, float | None, tuple[str, ...]]:
    """Change of per-query nDCG@10 from ``reference`` to ``candidate``: mean, worse, better, p, worst ids."""
    from scipy.stats import ttest_rel

    if not reference:
        return None, 0, 0, None, ()
    queries = list(reference)
    before = np.array([reference[q] for q in queries])
    after = np.array([candidate[q] for q in queries])
    change = after - before
    p_value = None
    if len(queries) > 1 and np.ptp(change) > 1e-12:
        p_value = float(ttest_rel(after, before).pvalue)
    worst = sorted((c, i) for i, c in enumerate(change) if c < 0)[:5]
    return (
        float(change.mean()),
        int((change < 0).sum()),
        int((change > 0).sum()),
        p_value,
        tuple(queries[i] for _, i in worst),
    )


def _report(
    dataset: EvalSet, deployments: Sequence[Deployment], collected: _Collected, *, pairs: int, agreement_k: int
) -> EvalReport:
    judged = list(collected.qrels)
    ndcg: dict[str, dict[str, float]] = {}

    def means(name: str, rankings: Mapping[str, Sequence[str]]) -> dict[str, float]:
        if not judged:
            ndcg[name] = {}
            return {}
        per_query = measure(collected.qrels, rankings)
        # A judged query that a measure leaves out (none should) counts as 0, as trec_eval -c does.
        ndcg[name] = {q: per_query["nDCG@10"].get(q, 0.0) for q in judged}
        return {m: float(np.mean([values.get(q, 0.0) for q in judged])) for m, values in per_query.items()}

    systems = [SystemResult(name=FIRST_STAGE, address=None, measures=means(FIRST_STAGE, collected.doc_ids))]
    for deployment in deployments:
        scores = collected.scores[deployment.name]
        rankings = {qid: [docs[i] for i in rerank_order(scores[qid])] for qid, docs in collected.doc_ids.items()}
        systems.append(
            SystemResult(name=deployment.name, address=deployment.address, measures=means(deployment.name, rankings))
        )

    order = list(collected.doc_ids)
    pairs_agreement = []
    for reference, candidate in itertools.combinations([d.name for d in deployments], 2):
        result = agreement(
            [collected.scores[reference][q] for q in order],
            [collected.scores[candidate][q] for q in order],
            k=agreement_k,
        )
        change, worse, better, p_value, most_worse = _paired(ndcg[reference], ndcg[candidate])
        pairs_agreement.append(
            PairAgreement(
                reference=reference,
                candidate=candidate,
                queries=result.queries,
                k=result.k,
                top_k_overlap=result.top_k_overlap,
                kendall_tau=result.kendall_tau,
                ndcg_change=change,
                queries_worse=worse,
                queries_better=better,
                p_value=p_value,
                most_worse=most_worse,
            )
        )
    notes = list(dataset.notes)
    if len(order) > len(judged):
        notes.append(
            f"{len(order) - len(judged)} queries have no relevant document: "
            "left out of the measures, kept for agreement"
        )
    return EvalReport(
        dataset=dataset.name,
        format=dataset.format,
        queries=len(order),
        judged=len(judged),
        candidates=pairs,
        systems=tuple(systems),
        agreement=tuple(pairs_agreement),
        notes=tuple(notes),
    )


def ndcg_gate(report: EvalReport, max_drop: float) -> list[str]:
    """One line per deployment whose nDCG@10 is more than ``max_drop`` below the first deployment's.

    The first deployment is the reference (FP32, say); an empty list means every other one passed.
    """
    reference, *others = report.systems[1:]
    if "nDCG@10" not in reference.measures:
        raise DatasetError(f"{report.dataset}: the nDCG@10 gate needs queries with a relevant document")
    base = reference.measures["nDCG@10"]
    return [
        f"{system.name}: nDCG@10 {value:.4f} is {base - value:.4f} below {reference.name}'s {base:.4f} "
        f"(allowed: {max_drop})"
        for system in others
        if base - (value := system.measures["nDCG@10"]) > max_drop
    ]
