"""Send an eval set through deployments and measure the rankings: ir-measures for the ranking
measures, ``reranker_common.agreement`` for how deployments agree.

Rankings are turned into runs with strictly decreasing scores (``n - position``) before they reach
ir-measures: trec_eval, under it, breaks equal scores by document id, while here equal reranker
scores keep the first-stage order, as ``reranker_common.agreement.top_k`` does.
"""

from __future__ import annotations

import itertools
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
    "evaluate",
    "measure",
    "rerank_order",
]

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
"""Report name -> ir-measures measure. Recall and MRR count relevance >= 1 as relevant; nDCG uses the grades."""


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
    """How two deployments' scores agree, averaged over every scored query."""

    reference: str
    candidate: str
    queries: int
    k: int
    top_k_overlap: float
    kendall_tau: float


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
    if dataset.judged == 0 and len(deployments) < 2:
        raise DatasetError(
            f"{dataset.name}: no query has a relevant document, so there is nothing to measure "
            "(add relevance judgments, or give two deployments to measure their agreement)"
        )
    say = progress or (lambda _line: None)
    total = len(dataset)
    step = max(1, total // 20)
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
        if count % step == 0 or count == total:
            bar = "#" * (20 * count // max(total, 1))
            say(f"[{bar:<20}] {count}/{total} queries, {pairs} candidates each deployment")
    return _report(dataset, deployments, collected, pairs=pairs, agreement_k=agreement_k)


def _report(
    dataset: EvalSet, deployments: Sequence[Deployment], collected: _Collected, *, pairs: int, agreement_k: int
) -> EvalReport:
    def means(rankings: Mapping[str, Sequence[str]]) -> dict[str, float]:
        if not collected.qrels:
            return {}
        per_query = measure(collected.qrels, rankings)
        # Every judged query has a ranking, so each mean is over all of them.
        return {
            name: float(np.mean([values.get(q, 0.0) for q in collected.qrels])) for name, values in per_query.items()
        }

    systems = [SystemResult(name=FIRST_STAGE, address=None, measures=means(collected.doc_ids))]
    for deployment in deployments:
        scores = collected.scores[deployment.name]
        rankings = {qid: [docs[i] for i in rerank_order(scores[qid])] for qid, docs in collected.doc_ids.items()}
        systems.append(SystemResult(name=deployment.name, address=deployment.address, measures=means(rankings)))

    order = list(collected.doc_ids)
    pairs_agreement = []
    for reference, candidate in itertools.combinations([d.name for d in deployments], 2):
        result = agreement(
            [collected.scores[reference][q] for q in order],
            [collected.scores[candidate][q] for q in order],
            k=agreement_k,
        )
        pairs_agreement.append(
            PairAgreement(
                reference=reference,
                candidate=candidate,
                queries=result.queries,
                k=result.k,
                top_k_overlap=result.top_k_overlap,
                kendall_tau=result.kendall_tau,
            )
        )
    notes = list(dataset.notes)
    if len(order) > len(collected.qrels):
        notes.append(
            f"{len(order) - len(collected.qrels)} queries have no relevant document: "
            "left out of the measures, kept for agreement"
        )
    return EvalReport(
        dataset=dataset.name,
        format=dataset.format,
        queries=len(order),
        judged=len(collected.qrels),
        candidates=pairs,
        systems=tuple(systems),
        agreement=tuple(pairs_agreement),
        notes=tuple(notes),
    )
