"""Eval sets: queries with their first-stage candidates and relevance judgments, read from disk.

Two layouts (``docs/eval.md`` has examples):

- **BEIR**: a folder with ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
  (``_id``, ``text``), ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``) and a
  first-stage run: a TREC run file (``qid Q0 docid rank score tag``) or a JSONL of per-query
  candidate lists (``{"query_id": ..., "doc_ids": [...]}``, first-stage order).
- **JSONL**: one query per line, ``{"id": ..., "query": ..., "candidates": [...]}``; a candidate is
  a string or ``{"id": ..., "text": ..., "relevance": 0}``, in first-stage order.

Both are read in two passes so that large sets stream: the first checks every record and counts
(keeping ids only), the second yields one :class:`EvalQuery` at a time. A BEIR corpus is scanned
once and only the texts of the candidates are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import DatasetError

__all__ = [
    "DEFAULT_DEPTH",
    "Candidate",
    "EvalQuery",
    "EvalSet",
    "load_dataset",
    "read_beir",
    "read_jsonl",
    "test_set",
]

DEFAULT_DEPTH = 100
"""Candidates per query taken from a BEIR run (the usual rerank depth)."""

TEST_SET_NAME = "multilingual-test"


@dataclass(frozen=True)
class Candidate:
    doc_id: str
    text: str


@dataclass(frozen=True)
class EvalQuery:
    """One query, its candidates in first-stage order, and its relevance judgments."""

    query_id: str
    text: str
    candidates: tuple[Candidate, ...]
    qrels: Mapping[str, int]
    """Judged documents and their relevance (0 = not relevant); may name documents that are not candidates."""

    @property
    def judged(self) -> bool:
        """Whether at least one document is relevant: only then do the ranking measures mean anything."""
        return any(relevance > 0 for relevance in self.qrels.values())


@dataclass(frozen=True)
class EvalSet:
    """A dataset ready to iterate: ``len()`` queries, read from disk one at a time."""

    name: str
    format: str
    """``"beir"`` or ``"jsonl"``."""
    size: int
    judged: int
    """Queries with at least one relevant document: the ones the ranking measures average over."""
    _queries: Callable[[], Iterator[EvalQuery]] = field(repr=False)
    notes: tuple[str, ...] = ()
    """What the reader left out and why (queries of another split, judged queries without candidates)."""

    def __iter__(self) -> Iterator[EvalQuery]:
        return self._queries()

    def __len__(self) -> int:
        return self.size


# -- JSON Lines helpers -------------------------------------------------------------------------


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; errors name the file and line."""
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield number, line.rstrip("\n")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _string(record: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = record.get(key, default)
    if value is None:
        raise DatasetError(f"{where}: missing {key!r}")
    if isinstance(value, int) and not isinstance(value, bool) and key in ("_id", "id", "query_id"):
        value = str(value)  # numeric ids are common in BEIR files
    if not isinstance(value, str):
        raise DatasetError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _relevance(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise DatasetError(f"{where}: relevance must be a non-negative integer or a boolean, got {value!r}")


# -- simple JSONL -------------------------------------------------------------------------------


def _parse_jsonl_query(record: Mapping[str, Any], number: int, path: Path) -> EvalQuery:
    where = f"{path}:{number}"
    query_id = _string(record, "id", where, default=f"q{number}")
    text = _string(record, "query", where)
    if not text.strip():
        raise DatasetError(f"{where}: the query is empty")
    raw = record.get("candidates")
    if not isinstance(raw, list) or not raw:
        raise DatasetError(f"{where}: 'candidates' must be a non-empty list (strings or objects with 'text')")
    candidates: list[Candidate] = []
    qrels: dict[str, int] = {}
    for index, item in enumerate(raw):
        here = f"{where}: candidate {index}"
        if isinstance(item, str):
            doc_id, doc_text, relevance = f"{query_id}/{index}", item, None
        elif isinstance(item, dict):
            doc_id = _string(item, "id", here, default=f"{query_id}/{index}")
            doc_text = _string(item, "text", here)
            relevance = _relevance(item["relevance"], here) if "relevance" in item else None
        else:
            raise DatasetError(f"{here}: expected a string or an object with 'text', got {type(item).__name__}")
        if doc_id in qrels:
            raise DatasetError(f"{here}: candidate id {doc_id!r} appears twice in this query")
        candidates.append(Candidate(doc_id, doc_text))
        qrels[doc_id] = relevance or 0
    return EvalQuery(query_id=query_id, text=text, candidates=tuple(candidates), qrels=qrels)


def read_jsonl(path: Path | str) -> EvalSet:
    """A simple JSONL eval set: ``{"id"?, "query", "candidates": [str | {"id"?, "text", "relevance"?}]}`` per line.

    Candidates are in first-stage order; relevance is graded (0, 1, 2, ...) or binary
    (``true``/``false``), 0 when absent. Query ids default to ``q<line>``, candidate ids to
    ``<query id>/<index>``. Every line is checked before the set is returned.
    """
    path = Path(path)
    seen: set[str] = set()
    judged = 0
    for number, record in _jsonl(path):
        query = _parse_jsonl_query(record, number, path)
        if query.query_id in seen:
            raise DatasetError(f"{path}:{number}: query id {query.query_id!r} appears twice")
        seen.add(query.query_id)
        judged += query.judged
    if not seen:
        raise DatasetError(f"{path}: no queries")

    def queries() -> Iterator[EvalQuery]:
        for number, record in _jsonl(path):
            yield _parse_jsonl_query(record, number, path)

    return EvalSet(name=path.name, format="jsonl", size=len(seen), judged=judged, _queries=queries)


# -- BEIR ---------------------------------------------------------------------------------------


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id  corpus-id  score`` rows (tab-separated, BEIR's header line optional)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _text_lines(path):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) == 4:  # TREC qrels: qid iteration docid relevance
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise DatasetError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'")
        query_id, doc_id, score = (part.strip() for part in parts)
        try:
            relevance = int(score)
        except ValueError:
            if number == 1:
                continue  # the header
            raise DatasetError(f"{path}:{number}: score {score!r} is not an integer") from None
        if relevance < 0:
            continue  # some collections mark "judged, spam" with -1: not relevant, not counted
        qrels.setdefault(query_id, {})[doc_id] = relevance
    if not qrels:
        raise DatasetError(f"{path}: no judgments")
    return qrels


def _read_run(path: Path, depth: int) -> dict[str, list[str]]:
    """First-stage candidates per query, best first, at most ``depth`` each.

    A ``.jsonl`` file holds ``{"query_id", "doc_ids"}`` lines in first-stage order; anything else
    is read as a TREC run, ordered by score (higher first), ties in file order.
    """
    lists: dict[str, list[str]] = {}
    if path.suffix == ".jsonl":
        for number, record in _jsonl(path):
            where = f"{path}:{number}"
            query_id = _string(record, "query_id", where)
            doc_ids = record.get("doc_ids")
            if not isinstance(doc_ids, list) or not all(isinstance(d, str | int) for d in doc_ids):
                raise DatasetError(f"{where}: 'doc_ids' must be a list of document ids")
            if query_id in lists:
                raise DatasetError(f"{where}: query id {query_id!r} appears twice")
            if doc_ids:  # an empty list: the first stage found nothing for this query
                lists[query_id] = [str(d) for d in doc_ids]
    else:
        scored: dict[str, list[tuple[float, int, str]]] = {}
        for number, line in _text_lines(path):
            parts = line.split()
            if len(parts) != 6:
                raise DatasetError(f"{path}:{number}: expected a TREC run line 'qid Q0 docid rank score tag'")
            try:
                score = float(parts[4])
            except ValueError:
                raise DatasetError(f"{path}:{number}: score {parts[4]!r} is not a number") from None
            scored.setdefault(parts[0], []).append((-score, number, parts[2]))
        lists = {query_id: [doc_id for *_, doc_id in sorted(rows)] for query_id, rows in scored.items()}
    if not lists:
        raise DatasetError(f"{path}: no candidates")
    for query_id, doc_ids in lists.items():
        if len(set(doc_ids)) != len(doc_ids):
            duplicate = next(d for d in doc_ids if doc_ids.count(d) > 1)
            raise DatasetError(f"{path}: query {query_id!r} lists document {duplicate!r} twice")
        del doc_ids[depth:]
    return lists


def _default_run(folder: Path) -> Path:
    found = [folder / name for name in ("run.trec", "candidates.jsonl") if (folder / name).is_file()]
    if len(found) != 1:
        raise DatasetError(
            f"{folder}: pass the first-stage run (--run FILE: a TREC run or a candidates .jsonl); "
            "without it the folder must hold exactly one of run.trec or candidates.jsonl"
        )
    return found[0]


def read_beir(
    folder: Path | str,
    *,
    run: Path | str | None = None,
    split: str = "test",
    depth: int = DEFAULT_DEPTH,
    name: str | None = None,
) -> EvalSet:
    """A BEIR-layout dataset and a first-stage run over it (default: ``run.trec`` or ``candidates.jsonl`` in it).

    The judged queries of ``qrels/<split>.tsv`` that the run has candidates for are evaluated,
    each with its first ``depth`` candidates. Every id is checked: qrels and run must name
    queries of ``queries.jsonl`` and documents of ``corpus.jsonl``.
    """
    folder = Path(folder)
    if depth < 1:
        raise DatasetError(f"depth must be at least 1, got {depth}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder (a BEIR dataset is a folder; a .jsonl file is the simple layout)")
    missing = [n for n in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv") if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"{folder}: missing {', '.join(missing)} (BEIR layout, split {split!r})")
    run_path = Path(run) if run is not None else _default_run(folder)

    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv")
    run_lists = _read_run(run_path, depth)
    notes: list[str] = []
    other = [q for q in run_lists if q not in qrels]
    if len(other) == len(run_lists):
        raise DatasetError(f"{run_path}: none of its queries has judgments in qrels/{split}.tsv (another split?)")
    if other:
        notes.append(f"{len(other)} queries of the run have no judgments in qrels/{split}.tsv: not evaluated")
    without = [q for q in qrels if q not in run_lists]
    if without:
        notes.append(f"{len(without)} judged queries have no candidates in the run: not evaluated")
    selected = [q for q in qrels if q in run_lists]

    texts: dict[str, str] = {}
    wanted = set(selected)
    for number, record in _jsonl(folder / "queries.jsonl"):
        query_id = _string(record, "_id", f"{folder / 'queries.jsonl'}:{number}")
        if query_id in wanted:
            texts[query_id] = _string(record, "text", f"{folder / 'queries.jsonl'}:{number}")
    unknown = [q for q in selected if q not in texts]
    if unknown:
        raise DatasetError(
            f"qrels/{split}.tsv and the run name {len(unknown)} queries not in queries.jsonl, e.g. {unknown[0]!r}"
        )

    needed = {d for q in selected for d in run_lists[q]}
    judged_docs = {d for q in selected for d in qrels[q]}
    documents: dict[str, str] = {}
    corpus_ids_seen: set[str] = set()
    for number, record in _jsonl(folder / "corpus.jsonl"):
        where = f"{folder / 'corpus.jsonl'}:{number}"
        doc_id = _string(record, "_id", where)
        if doc_id in judged_docs:
            corpus_ids_seen.add(doc_id)
        if doc_id in needed:
            # As BEIR's reranker joins them: title, a space, text.
            title = _string(record, "title", where, default="")
            documents[doc_id] = f"{title} {_string(record, 'text', where)}".strip()
    absent = needed - documents.keys()
    if absent:
        raise DatasetError(f"{run_path}: {len(absent)} candidates are not in corpus.jsonl, e.g. {sorted(absent)[0]!r}")
    unjudgeable = judged_docs - corpus_ids_seen
    if unjudgeable:
        raise DatasetError(
            f"qrels/{split}.tsv: {len(unjudgeable)} judged documents are not in corpus.jsonl, "
            f"e.g. {sorted(unjudgeable)[0]!r}"
        )

    def queries() -> Iterator[EvalQuery]:
        for query_id in selected:
            yield EvalQuery(
                query_id=query_id,
                text=texts[query_id],
                candidates=tuple(Candidate(d, documents[d]) for d in run_lists[query_id]),
                qrels=qrels[query_id],
            )

    judged = sum(any(r > 0 for r in qrels[q].values()) for q in selected)
    return EvalSet(
        name=name or folder.name,
        format="beir",
        size=len(selected),
        judged=judged,
        _queries=queries,
        notes=tuple(notes),
    )


# -- entry points -------------------------------------------------------------------------------


def test_set(*, depth: int = DEFAULT_DEPTH) -> EvalSet:
    """The shipped multilingual set (BEIR layout, ``reranker_eval/data``): see ``docs/eval.md``."""
    folder = Path(str(resources.files("reranker_eval") / "data"))
    return read_beir(folder, split="test", depth=depth, name=TEST_SET_NAME)


test_set.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the name


def load_dataset(
    path: Path | str, *, run: Path | str | None = None, split: str = "test", depth: int = DEFAULT_DEPTH
) -> EvalSet:
    """A ``.jsonl`` file (simple layout) or a BEIR folder, chosen by what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_beir(path, run=run, split=split, depth=depth)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if run is not None:
        raise DatasetError("--run belongs to a BEIR folder; a JSONL set lists its candidates in each line")
    return read_jsonl(path)
