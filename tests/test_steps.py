"""The python steps' logic (``reranker_steps``), called directly: no Triton.

What a user sees through the server (FlagReranker parity, INVALID_ARGUMENT, batching across
requests) is asserted against a real Triton in test_triton_models.py and test_ensemble.py; here
are the rules behind it: parameters, request limits, rows and windows, bucket padding,
sub-batching and the window maximum.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from reranker_export.testmodels import long_document, relevance_examples
from reranker_steps.abandonment import Abandonment
from reranker_steps.errors import Abandoned, BadRequest
from reranker_steps.onnx_scoring import OnnxScorer, check_inputs, concatenate_padded, session_options, sub_batches
from reranker_steps.pairs import (
    DEFAULTS,
    PairEncoder,
    TextLimits,
    bucket_width,
    longest_first_lengths,
    plan_rows,
    read_texts,
)
from reranker_steps.params import StepParameters
from reranker_steps.windows import check_document_index, document_scores, max_per_document
from support import TEST_TOKENIZER, WINDOW_STRIDE

MAX_LENGTH = TEST_TOKENIZER.max_length  # 128
BUCKETS = TEST_TOKENIZER.effective_length_buckets  # (32, 64, 128)
XLMR_BOS, XLMR_PAD, XLMR_EOS = 0, 1, 2


def _params(**values: object) -> StepParameters:
    return StepParameters({k: {"string_value": str(v)} for k, v in values.items()}, DEFAULTS)


def _encoder(model_dir: Path, **values: object) -> PairEncoder:
    settings = {"max_length": MAX_LENGTH, "length_buckets": ",".join(map(str, BUCKETS)), "max_rows": 64}
    return PairEncoder.from_file(str(model_dir / "tokenizer.json"), _params(**{**settings, **values}))


def _raw_ids(encoder: PairEncoder, text: str) -> list[int]:
    return encoder.tokenizer.encode(text, add_special_tokens=False).ids


def _strings(*values: bytes | str) -> np.ndarray:
    return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)


# -- parameters -----------------------------------------------------------------------------------


def test_parameters_take_defaults_and_refuse_unknown_keys() -> None:
    params = _params(max_length=256)
    assert params.integer("max_length") == 256 and params.text("overflow") == "truncate"
    from_json = StepParameters.from_model_config(
        json.dumps(
            {"parameters": {"max_length": {"string_value": " 64 "}, "EXECUTION_ENV_PATH": {"string_value": "x"}}}
        ),
        DEFAULTS,
    )
    assert from_json.integer("max_length") == 64  # stripped; the backend's own upper-case keys pass
    with pytest.raises(ValueError, match="unknown parameters \\['max_lenght'\\]"):
        _params(max_lenght=64)
    with pytest.raises(ValueError, match="max_length must be >= 8"):
        _params(max_length=4).integer("max_length", 8)
    with pytest.raises(ValueError, match="must be an integer"):
        _params(max_length="lots").integer("max_length")
    with pytest.raises(ValueError, match="comma-separated integers"):
        _params(length_buckets="64,big").integers("length_buckets")


# -- request text ---------------------------------------------------------------------------------


LIMITS = TextLimits(max_documents=4, max_query_bytes=32, max_document_bytes=64, max_request_bytes=150)


@pytest.mark.parametrize(
    ("query", "documents", "phrase"),
    [
        (None, _strings("d"), "send both inputs"),
        (_strings("q", "q"), _strings("d"), "exactly one string"),
        (_strings("q"), np.array([[b"d"]], dtype=np.object_), "1-D list"),
        (_strings("q"), _strings(), "at least one document"),
        (_strings("q"), _strings(*["d"] * 5), "too many documents: 5 > 4"),
        (_strings("q" * 33), _strings("d"), "query is 33 bytes"),
        (_strings("q"), _strings("d", "x" * 65), "document 1 is 65 bytes"),
        (_strings("q"), _strings(*["x" * 60] * 3), "request text is 181 bytes"),
        (_strings(b"\xc3\x28"), _strings("d"), "query is not valid UTF-8"),
        (_strings(" \t"), _strings("d"), "query is empty"),
        (_strings("q"), _strings("d", b"caf\xe9"), "document 1 is not valid UTF-8"),
    ],
)
def test_read_texts_refuses_what_the_caller_must_change(
    query: np.ndarray | None, documents: np.ndarray, phrase: str
) -> None:
    with pytest.raises(BadRequest, match=phrase):
        read_texts(query, documents, LIMITS)


def test_read_texts_decodes_utf8() -> None:
    assert read_texts(_strings("¿qué?"), _strings("día", ""), LIMITS) == ("¿qué?", ["día", ""])


# -- rows, windows and buckets --------------------------------------------------------------------


def test_truncate_keeps_the_first_budget_tokens_of_each_passage() -> None:
    assert plan_rows([3, 10, 0], 5, overflow="truncate", window_stride=2, max_rows=8) == [
        (0, 0, 3),
        (1, 0, 5),
        (2, 0, 0),
    ]


@pytest.mark.parametrize(("length", "budget", "stride"), [(10, 4, 3), (10, 4, 8), (9, 4, 1), (4, 4, 2), (100, 7, 5)])
def test_windows_cover_every_passage_token_and_end_at_its_end(length: int, budget: int, stride: int) -> None:
    rows = plan_rows([length], budget, overflow="window", window_stride=stride, max_rows=1000)
    covered = set()
    for document, start, n in rows:
        assert document == 0 and n == min(length, budget)
        covered.update(range(start, start + n))
    assert covered == set(range(length))
    starts = [start for _, start, _ in rows]
    assert starts[0] == 0 and starts[-1] + min(length, budget) == length
    assert all(0 < b - a <= min(stride, budget) for a, b in itertools.pairwise(starts))


def test_per_document_budgets() -> None:
    # longest_first: each document's share of the pair depends on its own length
    assert plan_rows([3, 10, 12], [5, 4, 6], overflow="truncate", window_stride=2, max_rows=8) == [
        (0, 0, 3),
        (1, 0, 4),
        (2, 0, 6),
    ]
    windows = plan_rows([3, 10], [5, 4], overflow="window", window_stride=4, max_rows=8)
    assert windows == [(0, 0, 3), (1, 0, 4), (1, 4, 4), (1, 6, 4)]


@pytest.mark.parametrize("budget", [1, 2, 7, 8, 61, 62])
def test_longest_first_lengths_are_the_tokenizers_rule(budget: int) -> None:
    """The ``tokenizers`` library's LongestFirst, run on id sequences of every length pair."""
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    tokenizer.enable_truncation(budget, strategy="longest_first")  # no specials: budget = max_length
    for na, nb in itertools.product(range(0, 2 * budget + 3), repeat=2):
        pair = tokenizer.encode(["a"] * na, ["b"] * nb, is_pretokenized=True)
        expected = (pair.ids.count(0), pair.ids.count(1))
        assert longest_first_lengths(na, nb, budget) == expected, (na, nb, budget)


def test_too_many_rows_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="more than 3 windows"):
        plan_rows([100], 10, overflow="window", window_stride=10, max_rows=3)
    with pytest.raises(BadRequest, match="more than 3 pairs"):
        plan_rows([1, 1, 1, 1], 10, overflow="truncate", window_stride=10, max_rows=3)


def test_bucket_width_is_the_smallest_that_holds() -> None:
    buckets = np.asarray(BUCKETS)
    assert [bucket_width(n, buckets) for n in (1, 32, 33, 64, 65, 128)] == [32, 32, 64, 64, 128, 128]


def test_encoder_pads_to_the_smallest_bucket(xlmr_model_dir: Path) -> None:
    encoder = _encoder(xlmr_model_dir)
    query = relevance_examples(seed=3, count=1)[0].query
    widths = set()
    for words in (3, 30, 400):
        out = encoder.encode(query, [long_document(words), ""])
        longest = int(out["attention_mask"].sum(axis=1).max())
        width = out["input_ids"].shape[1]
        assert width == min(b for b in BUCKETS if b >= longest)
        assert (out["input_ids"][out["attention_mask"] == 0] == XLMR_PAD).all()
        widths.add(width)
    assert widths == set(BUCKETS)  # every bucket was exercised


def test_encoder_window_rows(xlmr_model_dir: Path) -> None:
    encoder = _encoder(xlmr_model_dir, overflow="window", window_stride=WINDOW_STRIDE)
    query = relevance_examples(seed=3, count=1)[0].query
    documents = [long_document(5), long_document(300), "", long_document(120)]
    out = encoder.encode(query, documents)
    q = _raw_ids(encoder, query)[: MAX_LENGTH * 3 // 4]
    budget = MAX_LENGTH - len(q) - 4
    head = [XLMR_BOS, *q, XLMR_EOS, XLMR_EOS]
    rows = out["document_index"].tolist()
    assert out["document_index"].dtype == np.int32 and rows == sorted(rows) and set(rows) == {0, 1, 2, 3}
    for d, doc in enumerate(documents):
        p = _raw_ids(encoder, doc)
        windows = [
            out["input_ids"][r][out["attention_mask"][r] == 1].tolist() for r in range(len(rows)) if rows[r] == d
        ]
        if len(p) <= budget:
            assert windows == [[*head, *p, XLMR_EOS]]
        else:
            starts = [*range(0, len(p) - budget, WINDOW_STRIDE), len(p) - budget]
            assert windows == [[*head, *p[s : s + budget], XLMR_EOS] for s in starts]


def test_encoder_refuses_settings_that_cannot_hold(xlmr_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="length_buckets"):
        _encoder(xlmr_model_dir, length_buckets="64,32,128")
    with pytest.raises(ValueError, match="query_max_length"):
        _encoder(xlmr_model_dir, query_max_length=MAX_LENGTH)
    with pytest.raises(ValueError, match="overflow"):
        _encoder(xlmr_model_dir, overflow="wrap")
    with pytest.raises(ValueError, match="model_inputs"):
        _encoder(xlmr_model_dir, model_inputs="attention_mask")


def test_bert_encoder_gives_token_type_ids(bert_model_dir: Path) -> None:
    encoder = _encoder(bert_model_dir, model_inputs="input_ids,attention_mask,token_type_ids")
    out = encoder.encode("a question", ["an answer", ""])
    assert list(out) == ["input_ids", "attention_mask", "token_type_ids"]
    types, mask = out["token_type_ids"], out["attention_mask"]
    assert set(types[0][mask[0] == 1].tolist()) == {0, 1} and not types[mask == 0].any()


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
def test_longest_first_pairs_equal_the_tokenizers_own(kind: str, request: pytest.FixtureRequest) -> None:
    """Every row is what the tokenizer's ``longest_first`` pair encoding gives (sentence-transformers'
    CrossEncoder and TEI encode this way): long and short queries, passages that cut, both cut, neither."""
    from tokenizers import Tokenizer

    model_dir: Path = request.getfixturevalue(f"{kind}_model_dir")
    inputs = "input_ids,attention_mask" + (",token_type_ids" if kind == "bert" else "")
    encoder = _encoder(model_dir, pair_semantics="longest_first", model_inputs=inputs)
    reference = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    reference.no_padding()
    reference.enable_truncation(MAX_LENGTH, strategy="longest_first")
    documents = [long_document(n) for n in (3, 20, 45, 60, 300)] + [""]
    cut = {"none": 0, "query": 0, "passage": 0, "both": 0}
    for words in (4, 40, 100):
        query = long_document(words)
        out = encoder.encode(query, documents)
        expected = reference.encode_batch([(query, d) for d in documents])
        for row, pair in enumerate(expected):
            assert _unpad_row(out, "input_ids", row) == pair.ids, (words, row)
            if kind == "bert":
                assert _unpad_row(out, "token_type_ids", row) == pair.type_ids
            na, nb = len(_raw_ids(encoder, query)), len(_raw_ids(encoder, documents[row]))
            qa, pb = longest_first_lengths(na, nb, MAX_LENGTH - encoder.template.num_special)
            cut[("none", "passage", "query", "both")[(pb < nb) + 2 * (qa < na)]] += 1
    assert all(cut.values()), cut  # the rows covered each way of cutting


def _unpad_row(out: dict[str, np.ndarray], name: str, row: int) -> list[int]:
    return out[name][row][out["attention_mask"][row] == 1].tolist()


def test_longest_first_windows_start_with_the_truncated_pair(xlmr_model_dir: Path) -> None:
    """Window mode with longest_first: the query is cut as truncation cuts it against the whole
    passage; the first window is the truncated pair, the next windows keep that query cut."""
    encoder = _encoder(xlmr_model_dir, pair_semantics="longest_first", overflow="window", window_stride=WINDOW_STRIDE)
    truncating = _encoder(xlmr_model_dir, pair_semantics="longest_first")
    documents = [long_document(5), long_document(300)]
    for query in (relevance_examples(seed=3, count=1)[0].query, long_document(100)):
        out = encoder.encode(query, documents)
        first = truncating.encode(query, documents)
        rows = out["document_index"].tolist()
        assert rows.count(0) == 1 and rows.count(1) > 2
        q, p = _raw_ids(encoder, query), _raw_ids(encoder, documents[1])
        q_kept, budget = longest_first_lengths(len(q), len(p), MAX_LENGTH - 4)
        head = [XLMR_BOS, *q[:q_kept], XLMR_EOS, XLMR_EOS]
        windows = [_unpad_row(out, "input_ids", r) for r in range(len(rows)) if rows[r] == 1]
        assert windows[0] == _unpad_row(first, "input_ids", 1)
        starts = [*range(0, len(p) - budget, WINDOW_STRIDE), len(p) - budget]
        assert windows == [[*head, *p[s : s + budget], XLMR_EOS] for s in starts]
        assert _unpad_row(out, "input_ids", 0) == _unpad_row(first, "input_ids", 0)


def test_pair_semantics_parameters(xlmr_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="pair_semantics must be one of flag, longest_first"):
        _encoder(xlmr_model_dir, pair_semantics="only_first")
    with pytest.raises(ValueError, match="query_max_length applies to pair_semantics flag only"):
        _encoder(xlmr_model_dir, pair_semantics="longest_first", query_max_length=32)


# -- the model step: batching and sub-batches -----------------------------------------------------


def test_sub_batches_run_rows_of_like_length_together() -> None:
    lengths = np.array([9, 3, 7, 3, 1, 8, 2])
    chunks = sub_batches(lengths, 3)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(7))  # every row once
    assert [lengths[c].tolist() for c in chunks] == [[1, 2, 3], [3, 7], [8, 9]]
    assert [c.tolist() for c in sub_batches(lengths, 0)] == [list(range(7))]


def test_concatenate_pads_to_the_longest_request() -> None:
    a = {"input_ids": np.array([[5, 6, 1]]), "attention_mask": np.array([[1, 1, 0]])}
    b = {"input_ids": np.array([[7, 1], [8, 9]]), "attention_mask": np.array([[1, 0], [1, 1]])}
    feed, rows = concatenate_padded([a, b], {"input_ids": 1})
    assert rows == [1, 2]
    np.testing.assert_array_equal(feed["input_ids"], [[5, 6, 1], [7, 1, 1], [8, 9, 1]])
    np.testing.assert_array_equal(feed["attention_mask"], [[1, 1, 0], [1, 0, 0], [1, 1, 0]])


def test_check_inputs_refuses_malformed_requests() -> None:
    ids = np.ones((2, 4), dtype=np.int32)
    assert check_inputs({"input_ids": ids}, ["input_ids"])["input_ids"].dtype == np.int64
    with pytest.raises(BadRequest, match="missing input 'attention_mask'"):
        check_inputs({"input_ids": ids}, ["input_ids", "attention_mask"])
    with pytest.raises(BadRequest, match="must be \\[rows, length\\]"):
        check_inputs({"input_ids": ids[0]}, ["input_ids"])
    with pytest.raises(BadRequest, match="share one shape"):
        check_inputs({"input_ids": ids, "attention_mask": ids[:, :3]}, ["input_ids", "attention_mask"])


def test_scorer_sub_batches_equal_one_run_and_isolate_a_failing_request(
    cpu_repository: Path, xlmr_model_dir: Path
) -> None:
    encoder = _encoder(xlmr_model_dir)
    example = relevance_examples(seed=5, count=1)[0]
    inputs = encoder.encode(example.query, [*example.documents, long_document(200)])
    feed = {name: inputs[name] for name in ("input_ids", "attention_mask")}
    path = str(cpu_repository / "reranker_model" / "1" / "model.onnx")

    def scorer(rows: int) -> OnnxScorer:
        return OnnxScorer(path, options=session_options(), declared_inputs=list(feed), sub_batch_rows=rows)

    whole, sorted_runs = scorer(0), scorer(3)
    expected = whole.score(feed)
    np.testing.assert_allclose(sorted_runs.score(feed), expected, rtol=1e-5, atol=1e-5)
    assert sorted_runs.rows_scored == len(expected)

    bad = {name: array.copy() for name, array in feed.items()}
    bad["input_ids"][0, 1] = 10**6  # outside the vocabulary: onnxruntime refuses the run
    results = sorted_runs.score_requests([feed, bad, feed])
    assert isinstance(results[1], Exception)
    for result in (results[0], results[2]):
        assert isinstance(result, np.ndarray)
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_scorer_skips_the_rows_of_an_abandoned_request(cpu_repository: Path, xlmr_model_dir: Path) -> None:
    encoder = _encoder(xlmr_model_dir)
    example = relevance_examples(seed=6, count=1)[0]
    inputs = encoder.encode(example.query, example.documents)
    feed = {name: inputs[name] for name in ("input_ids", "attention_mask")}
    rows = len(example.documents)
    path = str(cpu_repository / "reranker_model" / "1" / "model.onnx")
    scorer = OnnxScorer(path, options=session_options(), declared_inputs=list(feed), sub_batch_rows=2)
    expected = scorer.score(feed)
    scorer.rows_scored = 0

    asked: list[int] = []

    def abandoned(index: int) -> str | None:
        asked.append(index)
        # Request 1 is cancelled once the first sub-batch has run.
        return "cancelled by the caller" if index == 1 and scorer.rows_scored > 0 else None

    results = scorer.score_requests([feed, feed, feed], abandoned=abandoned)
    assert isinstance(results[1], Abandoned) and "cancelled" in str(results[1])
    for kept in (results[0], results[2]):
        assert isinstance(kept, np.ndarray)
        np.testing.assert_allclose(kept, expected, rtol=1e-5, atol=1e-5)
    # Rows are length-sorted across requests, so request 1 had rows in the first sub-batch at
    # most; every later row of it was skipped, and the counters add up.
    assert scorer.rows_skipped > 0 and scorer.rows_scored + scorer.rows_skipped == 3 * rows
    assert scorer.rows_scored <= 2 * rows + 2
    assert set(asked) == {0, 1, 2}


def test_session_options_refuse_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="graph_optimization_level"):
        session_options(graph_optimization_level="ORT_ENABLE_EVERYTHING")


# -- the window step ------------------------------------------------------------------------------


def test_window_max_per_document() -> None:
    # the maximum comes first for one document and last for another
    logits = np.array([[2.0], [0.5], [-1.0], [3.0], [-4.0], [-3.5]], dtype=np.float32)
    index = np.array([0, 0, 1, 2, 3, 3], dtype=np.int32)
    np.testing.assert_array_equal(document_scores(logits, index), [2.0, -1.0, 3.0, -3.5])
    np.testing.assert_array_equal(document_scores(logits, None), logits.reshape(-1))
    assert max_per_document(np.array([1.0, 5.0]), np.array([0, 0])).tolist() == [5.0]


@pytest.mark.parametrize(
    ("index", "rows", "phrase"),
    [
        ([0, 0], 3, "one document per logit row"),
        ([], 0, "one document per logit row"),
        ([0, -1], 2, "negative"),
        ([0, 2], 2, "documents \\[1\\]"),
    ],
)
def test_window_index_must_cover_every_document(index: list[int], rows: int, phrase: str) -> None:
    with pytest.raises(BadRequest, match=phrase):
        check_document_index(np.array(index, dtype=np.int32), rows)


def test_step_tensor_names_are_the_contract() -> None:
    # The steps cannot import reranker_client inside Triton; their copies must not drift.
    from reranker_client import config
    from reranker_steps import onnx_scoring, pairs

    assert pairs.DOCUMENT_INDEX == config.DOCUMENT_INDEX
    assert pairs.KNOWN_MODEL_INPUTS == (config.INPUT_IDS, config.ATTENTION_MASK, config.TOKEN_TYPE_IDS)
    assert onnx_scoring.OUTPUT_NAME == config.LOGITS


class _Request:
    """What the steps ask of a python-backend request: its timeout and whether it was cancelled."""

    def __init__(self, timeout_us: int = 0) -> None:
        self.timeout_us, self.cancelled, self.polls = timeout_us, False, 0

    def timeout(self) -> int:
        return self.timeout_us

    def is_cancelled(self) -> bool:  # a round trip to the server in Triton
        self.polls += 1
        return self.cancelled


def test_abandonment_asks_triton_sparingly_and_checks_the_timeout_every_time() -> None:
    now = [100.0]
    requests = [_Request(), _Request(timeout_us=50_000)]
    abandonment = Abandonment(requests, clock=lambda: now[0], poll_interval_s=0.025)
    assert abandonment.reason(0) is None and requests[0].polls == 1  # asked at once
    for _ in range(10):  # sub-batches in quick succession: not asked again
        now[0] += 0.001
        assert abandonment.reason(0) is None
    assert requests[0].polls == 1
    requests[0].cancelled = True
    now[0] += 0.02  # 30 ms since the first poll: asked again, and the cancellation is seen
    assert abandonment.reason(0) == "cancelled by the caller" and requests[0].polls == 2
    # The timeout needs no round trip: request 1 is past its 50 ms as soon as the time has
    # passed, while its next poll of Triton is not yet due.
    assert abandonment.reason(1) is None and requests[1].polls == 1  # 30 ms into the execution
    now[0] += 0.021  # 51 ms: past the timeout, 21 ms since the poll
    assert "past its 0.05 s timeout" in str(abandonment.reason(1)) and requests[1].polls == 1


def test_abandonment_without_is_cancelled_on_older_backends() -> None:
    class Old:
        def timeout(self) -> int:
            return 0

    assert Abandonment([Old()]).reason(0) is None
