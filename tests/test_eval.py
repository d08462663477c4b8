"""reranker-eval: the readers (BEIR, JSONL) and their errors, the measures on a hand-worked example,
the shipped test set against its generator, then real runs against the real Triton fixtures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ir_measures
import pytest

from reranker_common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, free_port
from reranker_eval import (
    FIRST_STAGE,
    DatasetError,
    DeploymentError,
    EvalQuery,
    load_dataset,
    measure,
    parse_deployment,
    read_beir,
    read_jsonl,
    rerank_order,
    test_set,
)
from reranker_eval.cli import main
from support import ROOT

# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: Sequence[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_reader_reads_strings_objects_and_graded_or_binary_relevance(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "set.jsonl",
        [
            {
                "id": "a",
                "query": "rain tomorrow?",
                "candidates": [{"text": "sunny", "relevance": 0}, {"text": "rain", "relevance": 2}],
            },
            {
                "query": "trains",
                "candidates": [
                    "late train",
                    {"id": "x", "text": "bus", "relevance": False},
                    {"text": "rail", "relevance": True},
                ],
            },
            {"query": "nothing judged", "candidates": ["one", "two"]},
        ],
    )
    dataset = read_jsonl(path)
    assert (len(dataset), dataset.judged, dataset.format) == (3, 2, "jsonl")
    first, second, third = list(dataset)
    assert first.query_id == "a" and [c.text for c in first.candidates] == ["sunny", "rain"]
    assert first.qrels == {"a/0": 0, "a/1": 2}
    assert second.query_id == "q2" and [c.doc_id for c in second.candidates] == ["q2/0", "x", "q2/2"]
    assert second.qrels == {"q2/0": 0, "x": 0, "q2/2": 1}
    assert not third.judged and third.qrels == {"q3/0": 0, "q3/1": 0}
    # The set streams: a second pass reads the file again and gives the same queries.
    assert list(dataset) == [first, second, third]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"query": "q", "candidates": ["a"]}', "not json"], r"set\.jsonl:2: not valid JSON"),
        (['["a list"]'], r":1: expected a JSON object"),
        (['{"candidates": ["a"]}'], r":1: missing 'query'"),
        (['{"query": "  ", "candidates": ["a"]}'], r":1: the query is empty"),
        (['{"query": "q", "candidates": []}'], r"'candidates' must be a non-empty list"),
        (['{"query": "q", "candidates": [3]}'], r"candidate 0: expected a string or an object"),
        (['{"query": "q", "candidates": [{"text": "a", "relevance": -1}]}'], r"relevance must be a non-negative"),
        (['{"query": "q", "candidates": [{"text": "a", "relevance": "high"}]}'], r"relevance must be"),
        (['{"query": "q", "candidates": [{"relevance": 1}]}'], r"candidate 0: missing 'text'"),
        (['{"query": "q", "candidates": [{"id": "d", "text": "a"}, {"id": "d", "text": "b"}]}'], r"'d' appears twice"),
        (['{"id": "same", "query": "q", "candidates": ["a"]}'] * 2, r":2: query id 'same' appears twice"),
        (["", "  "], r"no queries"),
    ],
)
def test_jsonl_reader_errors_name_the_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_jsonl(path)


def test_missing_and_unreadable_files_are_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "absent.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"query": "caf\xe9", "candidates": ["a"]}\n')
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(tmp_path / "latin1.jsonl")
    write_jsonl(tmp_path / "ok.jsonl", [{"query": "q", "candidates": ["a"]}])
    with pytest.raises(DatasetError, match="--run belongs to a BEIR folder"):
        load_dataset(tmp_path / "ok.jsonl", run=tmp_path / "run.trec")


def make_beir(root: Path, *, run: str | None = None, qrels: str | None = None) -> Path:
    """A tiny BEIR folder: three documents (one titled), two queries with judgments, one without."""
    (root / "qrels").mkdir(parents=True)
    write_jsonl(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Weather", "text": "Rain and wind tomorrow."},
            {"_id": "d2", "title": "", "text": "Bake the bread."},
            {"_id": 3, "text": "The train is late."},
        ],
    )
    write_jsonl(
        root / "queries.jsonl",
        [{"_id": "q1", "text": "will it rain"}, {"_id": "q2", "text": "late trains"}, {"_id": "q3", "text": "dev"}],
    )
    (root / "qrels" / "test.tsv").write_text(
        qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\t3\t1\n", encoding="utf-8"
    )
    (root / "qrels" / "dev.tsv").write_text("q3\td2\t1\n", encoding="utf-8")
    if run is None:
        # q1: d2 and d1 tie; the file order breaks the tie. q3 belongs to the dev split.
        run = "q1 Q0 3 3 0.1 bm25\nq1 Q0 d2 1 0.5 bm25\nq1 Q0 d1 2 0.5 bm25\nq2 Q0 3 1 9 bm25\nq3 Q0 d2 1 1 bm25\n"
    (root / "run.trec").write_text(run, encoding="utf-8")
    return root


def test_beir_reader_orders_the_run_by_score_and_joins_titles(tmp_path: Path) -> None:
    dataset = read_beir(make_beir(tmp_path / "beir"))
    assert (dataset.name, dataset.format, len(dataset), dataset.judged) == ("beir", "beir", 2, 2)
    assert dataset.notes == ("1 queries of the run have no judgments in qrels/test.tsv: not evaluated",)
    q1, q2 = list(dataset)
    assert [c.doc_id for c in q1.candidates] == ["d2", "d1", "3"]
    assert q1.candidates[1].text == "Weather Rain and wind tomorrow."
    assert q1.qrels == {"d1": 2, "d2": 0} and q2.qrels == {"3": 1}
    assert [c.doc_id for c in next(iter(read_beir(tmp_path / "beir", depth=2))).candidates] == ["d2", "d1"]
    dev = read_beir(tmp_path / "beir", split="dev")
    assert [q.query_id for q in dev] == ["q3"]
    assert dev.notes == ("2 queries of the run have no judgments in qrels/dev.tsv: not evaluated",)


def test_beir_reader_takes_candidate_lists_as_jsonl(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "beir")
    (folder / "run.trec").unlink()
    write_jsonl(
        folder / "candidates.jsonl", [{"query_id": "q1", "doc_ids": ["d1", 3]}, {"query_id": "q2", "doc_ids": []}]
    )
    dataset = load_dataset(folder)  # the folder's candidates.jsonl is the default run
    assert [(q.query_id, [c.doc_id for c in q.candidates]) for q in dataset] == [("q1", ["d1", "3"])]
    assert "1 judged queries have no candidates in the run: not evaluated" in dataset.notes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run": "q1 Q0 d9 1 1.0 bm25\n"}, r"1 candidates are not in corpus\.jsonl, e\.g\. 'd9'"),
        ({"qrels": "q1\td7\t1\n"}, r"1 judged documents are not in corpus\.jsonl, e\.g\. 'd7'"),
        ({"qrels": "q9\td1\t1\n", "run": "q9 Q0 d1 1 1.0 bm25\n"}, r"1 queries not in queries\.jsonl, e\.g\. 'q9'"),
        ({"run": "q3 Q0 d1 1 1.0 bm25\n"}, r"none of its queries has judgments in qrels/test\.tsv"),
        ({"run": "q1 Q0 d1 1\n"}, r"run\.trec:1: expected a TREC run line"),
        ({"run": "q1 Q0 d1 1 high bm25\n"}, r"score 'high' is not a number"),
        ({"run": "q1 Q0 d1 1 1 x\nq1 Q0 d1 2 0.5 x\n"}, r"query 'q1' lists document 'd1' twice"),
        ({"qrels": "q1\td1\n"}, r"test\.tsv:1: expected 'query-id<TAB>corpus-id<TAB>score'"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\tyes\n"}, r"test\.tsv:2: score 'yes' is not an integer"),
    ],
)
def test_beir_reader_errors(tmp_path: Path, change: dict[str, str], message: str) -> None:
    folder = make_beir(tmp_path / "beir", **change)
    with pytest.raises(DatasetError, match=message):
        read_beir(folder)


def test_beir_reader_needs_its_files_and_a_run(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "beir")
    with pytest.raises(DatasetError, match=r"missing qrels/train\.tsv"):
        read_beir(folder, split="train")
    (folder / "run.trec").unlink()
    with pytest.raises(DatasetError, match="pass the first-stage run"):
        read_beir(folder)
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DatasetError, match=r"missing corpus\.jsonl"):
        read_beir(folder, run=tmp_path / "run.trec")


# --------------------------------------------------------------------------------------------
# Measures: a hand-worked example
# --------------------------------------------------------------------------------------------


def test_measures_match_a_hand_worked_example() -> None:
    # Query a: ranking d1 d2 d3 d4; relevant d2 (1), d4 (2), and d9 (1), which the ranking missed.
    # trec_eval's nDCG: gain = relevance, discount log2(rank + 1).
    dcg = 1 / math.log2(3) + 2 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    qrels = {"a": {"d1": 0, "d2": 1, "d4": 2, "d9": 1}, "b": {"x1": 1}}
    rankings = {"a": ["d1", "d2", "d3", "d4"], "b": ["x1", "x2"]}
    values = measure(qrels, rankings)
    expected = {
        "nDCG@10": {"a": dcg / ideal, "b": 1.0},
        "Recall@1": {"a": 0.0, "b": 1.0},
        "Recall@3": {"a": 1 / 3, "b": 1.0},
        "Recall@5": {"a": 2 / 3, "b": 1.0},
        "Recall@10": {"a": 2 / 3, "b": 1.0},
        "MRR@10": {"a": 1 / 2, "b": 1.0},
    }
    assert values.keys() == expected.keys()
    for name, per_query in expected.items():
        assert values[name] == pytest.approx(per_query), name


def test_equal_scores_keep_the_first_stage_order() -> None:
    assert rerank_order([0.5, 0.9, 0.5]) == [1, 0, 2]
    # Given equal scores, ir-measures' providers order by document id, and not even the same way:
    # its MS MARCO provider (RR) puts "a" first, pytrec_eval (nDCG) puts "b" first.
    tied = {"q": {"b": 0.0, "a": 0.0}}
    assert ir_measures.calc_aggregate([ir_measures.RR @ 10], {"q": {"b": 1}}, tied)[ir_measures.RR @ 10] == 0.5
    assert ir_measures.calc_aggregate([ir_measures.nDCG @ 10], {"q": {"a": 1}}, tied)[ir_measures.nDCG @ 10] < 1.0
    # The eval hands it the ranking itself, so the first-stage order stands for every measure.
    assert measure({"q": {"b": 1}}, {"q": ["b", "a"]})["MRR@10"] == {"q": 1.0}
    assert measure({"q": {"a": 1}}, {"q": ["a", "b"]})["nDCG@10"] == {"q": 1.0}


# --------------------------------------------------------------------------------------------
# Deployment specs and the CLI's usage errors (no server)
# --------------------------------------------------------------------------------------------


def test_deployment_specs() -> None:
    assert parse_deployment("localhost:8001").name == "localhost:8001"
    spec = parse_deployment("int8=grpc://gpu-b:8001", model="reranker_int8")
    assert (spec.name, spec.scheme, spec.address, spec.model) == ("int8", "grpc", "gpu-b:8001", "reranker_int8")
    assert parse_deployment("a=dns:///reranker-headless:8001").address == "dns:///reranker-headless:8001"
    with pytest.raises(DeploymentError, match="HTTP deployments are not supported yet"):
        parse_deployment("gw=http://localhost:8080")
    with pytest.raises(DeploymentError, match="unknown scheme 'ftp'"):
        parse_deployment("ftp://host:1")
    with pytest.raises(DeploymentError, match="no address"):
        parse_deployment("name=")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--test-set", "--deployment", "gw=http://localhost:8080"], "HTTP deployments are not supported yet"),
        (["--dataset", "/nonexistent/set.jsonl", "--deployment", "localhost:1"], "no such file or folder"),
        (["--test-set", "--deployment", "a=h:1", "--deployment", "a=h:2"], "two deployments are called 'a'"),
        (["--test-set", "--deployment", "first-stage=h:1"], "'first-stage' is the first stage's name"),
        (["--test-set", "--deployment", "h:1", "--concurrency", "0"], "--concurrency must be at least 1"),
        (["--test-set", "--deployment", "h:1", "--run", "x.trec"], "--run and --split belong to --dataset"),
        (["--test-set", "--deployment", "h:1", "--output", "/nonexistent/r.json"], "does not exist"),
        (["--test-set", "--deployment", "h:1", "--max-ndcg-drop", "0.01"], "--max-ndcg-drop needs"),
        (["--test-set", "--deployment", "a=h:1", "--deployment", "b=h:2", "--max-ndcg-drop", "-1"], "non-negative"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.startswith("reranker-eval: error: ") and "Traceback" not in err


def test_cli_refuses_a_set_without_judgments_for_one_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "unjudged.jsonl", [{"query": "q", "candidates": ["a", "b"]}])
    assert main(["--dataset", str(path), "--deployment", f"127.0.0.1:{free_port()}"]) == EXIT_USAGE
    assert "no query has a relevant document, so there is nothing to measure" in capsys.readouterr().err


def test_cli_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reranker_eval.cli", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "--deployment" in done.stdout and "--test-set" in done.stdout


# --------------------------------------------------------------------------------------------
# The shipped test set
# --------------------------------------------------------------------------------------------


def test_shipped_test_set_is_what_its_script_writes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_eval_testset.py"), "--output", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shipped = ROOT / "src" / "reranker_eval" / "data"
    names = ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "run.trec"]
    for name in names:
        assert (shipped / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_shipped_test_set_is_held_out_and_multilingual() -> None:
    from reranker_export.testmodels import LANGUAGES, corpus

    train = {e.text for e in corpus() if e.split == "train"}
    queries = list(test_set())
    assert len(queries) == 48 and all(q.judged for q in queries)
    assert {q.query_id.split("-")[0] for q in queries} == set(LANGUAGES)
    texts = {q.text for q in queries} | {c.text for q in queries for c in q.candidates}
    assert not texts & train  # nothing the test models were trained on
    assert all(len(q.candidates) == 16 and sum(q.qrels.values()) == 2 for q in queries)


# --------------------------------------------------------------------------------------------
# Real runs against the real Triton fixtures
# --------------------------------------------------------------------------------------------


def torch_rankings(model_dir: Path, queries: Sequence[EvalQuery]) -> dict[str, list[str]]:
    """The reference: the same model in PyTorch (transformers), ranking each query's candidates."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rankings = {}
    for query in queries:
        inputs = tokenizer(
            [query.text] * len(query.candidates),
            [c.text for c in query.candidates],
            padding=True,
            truncation="only_second",
            max_length=128,
            return_tensors="pt",
        )
        with torch.inference_mode():
            scores = model(**inputs).logits.view(-1).tolist()
        rankings[query.query_id] = [query.candidates[i].doc_id for i in rerank_order(scores)]
    return rankings


def test_test_set_run_shows_the_reranker_beating_the_first_stage_and_agreement(
    triton_server: Any, bert_server: Any, xlmr_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's targets, with the model the quickstart and the fixtures serve (trained, seed 0)."""
    report_json, report_md = tmp_path / "report.json", tmp_path / "report.md"
    argv = ["--test-set", "--output", str(report_json), "--markdown", str(report_md), "--concurrency", "3"]
    argv += ["--deployment", f"xlmr={triton_server.grpc_url}", "--deployment", f"xlmr-again={triton_server.grpc_url}"]
    argv += ["--deployment", f"bert={bert_server.grpc_url}"]
    assert main(argv) == EXIT_OK
    report = json.loads(report_json.read_text(encoding="utf-8"))
    assert (report["dataset"], report["queries"], report["judged"], report["candidates"]) == (
        "multilingual-test",
        48,
        48,
        768,
    )
    systems = {s["name"]: s["measures"] for s in report["systems"]}
    assert list(systems) == [FIRST_STAGE, "xlmr", "xlmr-again", "bert"]
    first, xlmr = systems[FIRST_STAGE], systems["xlmr"]
    for name in ("nDCG@10", "MRR@10", "Recall@3", "Recall@5"):
        assert xlmr[name] > first[name], (name, xlmr[name], first[name])

    # The served model ranks as the same model in PyTorch does: the eval sent the right pairs.
    queries = list(test_set())
    qrels = {q.query_id: q.qrels for q in queries}
    reference = measure(qrels, torch_rankings(xlmr_model_dir, queries))
    assert xlmr == pytest.approx({name: sum(v.values()) / len(v) for name, v in reference.items()})
    assert first == pytest.approx(
        {
            name: sum(v.values()) / len(v)
            for name, v in measure(qrels, {q.query_id: [c.doc_id for c in q.candidates] for q in queries}).items()
        }
    )

    pairs = {(p["reference"], p["candidate"]): p for p in report["agreement"]}
    assert set(pairs) == {("xlmr", "xlmr-again"), ("xlmr", "bert"), ("xlmr-again", "bert")}
    same = pairs["xlmr", "xlmr-again"]
    assert (same["queries"], same["k"], same["top_k_overlap"], same["kendall_tau"]) == (48, 5, 1.0, 1.0)
    assert (same["ndcg_change"], same["queries_worse"], same["queries_better"], same["p_value"]) == (0.0, 0, 0, None)
    other = pairs["xlmr", "bert"]
    assert other["top_k_overlap"] < 1.0 and 0.0 < other["kendall_tau"] < 1.0  # two models: related, not equal
    assert other["ndcg_change"] == pytest.approx(systems["bert"]["nDCG@10"] - xlmr["nDCG@10"])
    assert len(other["most_worse"]) == min(5, other["queries_worse"])
    assert other["queries_worse"] + other["queries_better"] > 0 and 0.0 < other["p_value"] <= 1.0

    markdown = report_md.read_text(encoding="utf-8")
    assert f"| xlmr (reranker@grpc://{triton_server.grpc_url}) | {xlmr['nDCG@10']:.3f} (+" in markdown
    assert "| xlmr | bert |" in markdown
    assert capsys.readouterr().out == ""  # the Markdown went to the file, not stdout


def test_jsonl_run_splits_long_candidate_lists_and_prints_markdown(
    triton_server: Any, xlmr_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JSONL set with more candidates than the server takes per request (64 in the tests)."""
    queries = list(test_set())
    every_passage = {c.doc_id: c.text for q in queries for c in q.candidates}
    records = [
        {
            "id": q.query_id,
            "query": q.text,
            "candidates": [{"id": d, "text": t, "relevance": q.qrels.get(d, 0)} for d, t in every_passage.items()],
        }
        for q in queries[::8]
    ]
    path = write_jsonl(tmp_path / "long.jsonl", records)
    assert len(every_passage) == 96
    argv = [
        "--dataset",
        str(path),
        "--deployment",
        f"xlmr={triton_server.grpc_url}",
        "--output",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    assert "# reranker-eval: long.jsonl" in captured.out and "| first-stage |" in captured.out
    assert "6/6 queries" in captured.err  # progress on stderr

    dataset = read_jsonl(path)
    reference = measure({q.query_id: q.qrels for q in dataset}, torch_rankings(xlmr_model_dir, list(dataset)))
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["candidates"] == 6 * 96
    assert report["systems"][1]["measures"] == pytest.approx(
        {n: sum(v.values()) / len(v) for n, v in reference.items()}
    )


def test_unreachable_deployment_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    assert main(["--test-set", "--deployment", f"dead={dead}", "--wait", "0.5"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert f"deployment 'dead' (reranker@grpc://{dead}) is not ready" in err and "Traceback" not in err


def test_agreement_only_on_a_set_without_judgments(
    triton_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No relevance at all: no ranking measures, but two deployments can still be compared."""
    queries = list(test_set())[:5]
    path = write_jsonl(
        tmp_path / "unjudged.jsonl", [{"query": q.text, "candidates": [c.text for c in q.candidates]} for q in queries]
    )
    url = triton_server.grpc_url
    argv = [
        "--dataset",
        str(path),
        "--deployment",
        f"a={url}",
        "--deployment",
        f"b={url}",
        "--output",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == EXIT_OK
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["judged"] == 0 and all(s["measures"] == {} for s in report["systems"])
    (pair,) = report["agreement"]
    assert (pair["queries"], pair["top_k_overlap"], pair["kendall_tau"], pair["ndcg_change"]) == (5, 1.0, 1.0, None)
    out = capsys.readouterr().out
    assert "## Ranking quality" not in out and "| a | b | 1.000 | 1.000 | n/a | 0 / 0 | n/a |" in out
    assert "5 queries have no relevant document" in out


def test_ndcg_gate_passes_and_fails_on_real_deployments(
    triton_server: Any, bert_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """BERT as the reference, XLM-R as the candidate: XLM-R's nDCG@10 is lower (0.970 against 0.989)."""
    argv = [
        "--test-set",
        "--deployment",
        f"bert={bert_server.grpc_url}",
        "--deployment",
        f"xlmr={triton_server.grpc_url}",
    ]
    assert main([*argv, "--max-ndcg-drop", "0.05"]) == EXIT_OK
    assert "gate passed" in capsys.readouterr().err
    assert main([*argv, "--max-ndcg-drop", "0.001"]) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "## Ranking quality" in captured.out  # the report is written either way
    (line,) = [line for line in captured.err.splitlines() if "gate missed" in line]
    assert line.startswith("reranker-eval: gate missed: xlmr: nDCG@10 ") and "below bert's" in line


def test_a_request_the_server_rejects_exits_1_naming_the_query(
    triton_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's query limit is 8192 bytes: the second query breaks it, the run stops with its id."""
    records = [
        {
            "id": "fine",
            "query": "why is the train late",
            "candidates": [{"text": "The train is late.", "relevance": 1}],
        },
        {"id": "huge", "query": "train " * 2000, "candidates": [{"text": "The train is late.", "relevance": 1}]},
    ]
    path = write_jsonl(tmp_path / "set.jsonl", records)
    assert main(["--dataset", str(path), "--deployment", f"xlmr={triton_server.grpc_url}"]) == EXIT_FAILURE
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("reranker-eval: deployment 'xlmr' (reranker@grpc://") and "on query 'huge'" in err
    assert "InvalidInputError" in err
