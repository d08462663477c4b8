#!/usr/bin/env python3
"""Write reranker-eval's shipped test set (BEIR layout) from the test models' held-out corpus.

    .venv/bin/python scripts/make_eval_testset.py [--output src/reranker_eval/data]

Source: the ``test`` split of ``reranker_export/testdata`` (``reranker_export.testmodels.corpus()``),
which the test models never train on: 48 queries (8 topics x 6 languages: en, de, fr, es, zh, ru)
and 96 passages (two per topic and language).

- corpus.jsonl: the 96 passages; queries.jsonl: the 48 queries.
- qrels/test.tsv: a passage is relevant (1) to a query of its topic and language: two per query.
- run.trec: the first stage, a deliberately imperfect lexical retriever: per query, the 16
  passages of its language, ranked by the cosine of scikit-learn's word TF-IDF vectors
  (lowercased words of two letters or more, sublinear tf, fitted on the 96 passages). Chinese has
  no spaces, so its "words" are whole clauses and rarely match, as with any lexical index without
  a segmenter. Equal scores are ordered by a seeded shuffle (seed 14), not by the corpus order,
  which is grouped by topic and would leak the answer.

A test (tests/test_eval.py) runs this script and checks the shipped files are what it writes.
Needs the dev environment (scikit-learn is in the dev extra).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer

from reranker_export.testmodels import LANGUAGES, TOPICS, CorpusEntry, corpus

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "src" / "reranker_eval" / "data"
TIE_SEED = 14
RUN_TAG = "tfidf"


def _ids(entries: list[CorpusEntry], prefix: bool) -> list[str]:
    """``en-weather-1``, ``en-weather-2`` for passages; ``en-weather`` for queries (one per topic and language)."""
    counts: dict[tuple[str, str], int] = {}
    ids = []
    for entry in entries:
        key = (entry.language, entry.topic)
        counts[key] = counts.get(key, 0) + 1
        ids.append(f"{entry.language}-{entry.topic}-{counts[key]}" if prefix else f"{entry.language}-{entry.topic}")
    return ids


def build(output: Path) -> None:
    held_out = [e for e in corpus() if e.split == "test"]
    passages = [e for e in held_out if e.kind == "passage"]
    queries = [e for e in held_out if e.kind == "query"]
    assert len(queries) == len(TOPICS) * len(LANGUAGES), "one held-out query per topic and language"
    passage_ids, query_ids = _ids(passages, True), _ids(queries, False)

    vectorizer = TfidfVectorizer(sublinear_tf=True)
    passage_vectors = vectorizer.fit_transform([p.text for p in passages])
    similarity = (vectorizer.transform([q.text for q in queries]) @ passage_vectors.T).toarray()
    tie_order = list(range(len(passages)))
    random.Random(TIE_SEED).shuffle(tie_order)

    (output / "qrels").mkdir(parents=True, exist_ok=True)
    with (output / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for doc_id, passage in zip(passage_ids, passages, strict=True):
            out.write(json.dumps({"_id": doc_id, "title": "", "text": passage.text}, ensure_ascii=False) + "\n")
    with (output / "queries.jsonl").open("w", encoding="utf-8") as out:
        for query_id, query in zip(query_ids, queries, strict=True):
            out.write(json.dumps({"_id": query_id, "text": query.text}, ensure_ascii=False) + "\n")
    with (output / "qrels" / "test.tsv").open("w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for query_id, query in zip(query_ids, queries, strict=True):
            for doc_id, passage in zip(passage_ids, passages, strict=True):
                if (passage.topic, passage.language) == (query.topic, query.language):
                    out.write(f"{query_id}\t{doc_id}\t1\n")
    with (output / "run.trec").open("w", encoding="utf-8") as out:
        for row, (query_id, query) in enumerate(zip(query_ids, queries, strict=True)):
            # Scores as written (4 decimals), so that readers see the same ties this order breaks.
            scores = {i: f"{similarity[row, i]:.4f}" for i, p in enumerate(passages) if p.language == query.language}
            ranked = sorted(scores, key=lambda i: (-float(scores[i]), tie_order[i]))
            for rank, i in enumerate(ranked, start=1):
                out.write(f"{query_id} Q0 {passage_ids[i]} {rank} {scores[i]} {RUN_TAG}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write (default: %(default)s)")
    args = parser.parse_args()
    build(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
