"""The python-backend steps of an exported repository, each called by name in a real Triton server.

``reranker_tokenizer``, the ``cpu``-profile ``reranker_model`` and the window-mode ``reranker_scores``
are called directly, past the ``reranker`` ensemble (tests/test_ensemble.py covers the ensemble end
to end): XLM-R pair ids against FlagReranker's own tokenization (HF tokenizer +
``prepare_for_model_compat``), BERT pairs and token_type_ids against the tokenizer's ``longest_first``
(sentence-transformers' CrossEncoder), bucket padding, bad input, window rows, batching in the model step.

Repositories and servers are the session's (conftest.py): XLM-R truncate, BERT, and window mode
whose model step waits for concurrent requests to merge. The steps' logic alone (bucket padding,
window rows, sub-batching, window max) is unit-tested without Triton in tests/test_steps.py.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from reranker_export.settings import (
    ATTENTION_MASK,
    CORE_MODEL_NAME,
    DOCUMENT_INDEX,
    DOCUMENTS,
    INPUT_IDS,
    LOGITS,
    QUERY,
    SCORES,
    SCORES_MODEL_NAME,
    TOKEN_TYPE_IDS,
    TOKENIZER_MODEL_NAME,
)
from reranker_export.testmodels import corpus, long_document, relevance_examples
from support import TEST_TOKENIZER, model_counts, serving_settings

CALL_TIMEOUT_S = 60.0  # per gRPC call: a hung server fails the test instead of stalling the run
MAX_LENGTH = TEST_TOKENIZER.max_length  # 128
QUERY_MAX_LENGTH = TEST_TOKENIZER.effective_query_max_length  # 96
MAX_DOCUMENTS = TEST_TOKENIZER.max_documents
MAX_QUERY_BYTES = TEST_TOKENIZER.max_query_bytes
MAX_DOCUMENT_BYTES = TEST_TOKENIZER.max_document_bytes
MAX_REQUEST_BYTES = TEST_TOKENIZER.max_request_bytes
XLMR_BOS, XLMR_PAD, XLMR_EOS = 0, 1, 2  # <s> <pad> </s>: XLM-R's ids, which the test model keeps
BERT_PAD, BERT_CLS, BERT_SEP = 0, 2, 3  # [PAD] [CLS] [SEP] of the BERT test model


# -- servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running server and the model directory its repository was exported from."""

    url: str
    repository: Path
    model_dir: Path

    def client(self) -> Any:
        return grpcclient.InferenceServerClient(self.url)


@pytest.fixture(scope="module")
def xlmr(triton_server: Any, cpu_repository: Path, xlmr_model_dir: Path) -> Served:
    """The session server: XLM-R test model, truncate mode, the test settings."""
    return Served(url=triton_server.grpc_url, repository=cpu_repository, model_dir=xlmr_model_dir)


@pytest.fixture(scope="module")
def bert(bert_server: Any, bert_repository: Path, bert_model_dir: Path) -> Served:
    return Served(url=bert_server.grpc_url, repository=bert_repository, model_dir=bert_model_dir)


@pytest.fixture(scope="module")
def window(window_server: Any, window_repository: Path, xlmr_model_dir: Path) -> Served:
    """Window mode; the model step waits WINDOW_MERGE_DELAY_US for concurrent requests to merge."""
    return Served(url=window_server.grpc_url, repository=window_repository, model_dir=xlmr_model_dir)


# -- texts from the project's corpus (no <unk>: FlagReranker's text round trip keeps them) ------


def _passages(topic: str, languages: Sequence[str]) -> str:
    return " ".join(e.text for e in corpus() if e.topic == topic and e.language in languages and e.kind == "passage")


@dataclass(frozen=True)
class Texts:
    query: str
    long_query: str  # past QUERY_MAX_LENGTH tokens
    short: list[str]  # pairs well under MAX_LENGTH
    long: list[str]  # past MAX_LENGTH tokens: truncated, or several windows


@pytest.fixture(scope="module")
def texts() -> Texts:
    example = relevance_examples(seed=3, count=1)[0]
    return Texts(
        query=example.query,
        long_query=long_document(100),
        short=list(example.documents[:3]),
        long=[_passages("cooking", ("en", "de")), _passages("trains", ("fr", "ru")), _passages("space", ("es", "zh"))],
    )


# -- helpers -----------------------------------------------------------------------------------


def _bytes_input(name: str, values: Sequence[bytes | str]) -> Any:
    data = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)
    tensor = grpcclient.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def _array_input(name: str, array: np.ndarray, dtype: str) -> Any:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def infer(served: Served, model: str, inputs: Sequence[Any], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    with served.client() as client:
        result = client.infer(model, list(inputs), client_timeout=CALL_TIMEOUT_S)
    return {name: result.as_numpy(name) for name in outputs}


def tokenize(
    served: Served, query: bytes | str, documents: Sequence[bytes | str], outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """One call of the tokenizer step."""
    inputs = [_bytes_input(QUERY, [query]), _bytes_input(DOCUMENTS, documents)]
    return infer(served, TOKENIZER_MODEL_NAME, inputs, outputs)


@functools.cache
def _hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def flag_pairs(model_dir: Path, query: str, documents: Sequence[str]) -> list[dict[str, list[int]]]:
    """Pairs exactly as FlagReranker.compute_score_single_gpu builds them."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    hf = _hf_tokenizer(model_dir)
    q = hf([query], add_special_tokens=False, max_length=QUERY_MAX_LENGTH, truncation=True)["input_ids"][0]
    ps = hf(list(documents), add_special_tokens=False, max_length=MAX_LENGTH, truncation=True)["input_ids"]
    return [
        dict(prepare_for_model_compat(hf, q, p, truncation="only_second", max_length=MAX_LENGTH, padding=False))
        for p in ps
    ]


def raw_ids(model_dir: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def expect_invalid(served: Served, model: str, inputs: Sequence[Any], *phrases: str) -> str:
    with pytest.raises(InferenceServerException) as info, served.client() as client:
        client.infer(model, list(inputs), client_timeout=CALL_TIMEOUT_S)
    assert info.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT), info.value
    message = info.value.message() or ""
    for phrase in phrases:
        assert phrase in message, message
    return message


def _unpad(out: dict[str, np.ndarray], name: str, row: int) -> list[int]:
    return out[name][row][out[ATTENTION_MASK][row] == 1].tolist()


# -- tokenizer: pair semantics ---------------------------------------------------------------


def test_xlmr_pairs_equal_flagreranker(xlmr: Served, texts: Texts) -> None:
    documents = [*texts.short, *texts.long]
    for query in (texts.query, texts.long_query):
        out = tokenize(xlmr, query, [*documents, ""], [INPUT_IDS, ATTENTION_MASK])
        expected = flag_pairs(xlmr.model_dir, query, documents)
        assert out[INPUT_IDS].shape[0] == len(documents) + 1
        for row, pair in enumerate(expected):
            assert _unpad(out, INPUT_IDS, row) == pair["input_ids"], row
            # padding: pad id with mask 0 after the pair, nothing else
            n = len(pair["input_ids"])
            assert out[ATTENTION_MASK][row, :n].all() and not out[ATTENTION_MASK][row, n:].any()
            assert (out[INPUT_IDS][row, n:] == XLMR_PAD).all()
        # An empty document is an empty passage, <s> q </s></s></s>, as FlagReranker builds it
        # from ids with transformers 4. (Under transformers 5 its text round trip drops the
        # empty second text and builds <s> q </s>.)
        q = raw_ids(xlmr.model_dir, query)[:QUERY_MAX_LENGTH]
        assert _unpad(out, INPUT_IDS, len(documents)) == [XLMR_BOS, *q, XLMR_EOS, XLMR_EOS, XLMR_EOS]
    # the cases that matter were exercised: a truncated pair and a truncated query
    assert max(len(p["input_ids"]) for p in expected) == MAX_LENGTH
    assert len(raw_ids(xlmr.model_dir, texts.long_query)) > QUERY_MAX_LENGTH


def test_id_level_pairs_equal_text_round_trip(xlmr_model_dir: Path, texts: Texts) -> None:
    """FlagReranker under transformers 5 decodes and re-tokenizes; for ordinary text that equals
    the id-level construction (the model's training semantics) the server implements."""
    query = texts.long_query
    q = raw_ids(xlmr_model_dir, query)[:QUERY_MAX_LENGTH]
    budget = MAX_LENGTH - len(q) - 4
    for doc, pair in zip(texts.long, flag_pairs(xlmr_model_dir, query, texts.long), strict=True):
        assert pair["input_ids"] == [XLMR_BOS, *q, XLMR_EOS, XLMR_EOS, *raw_ids(xlmr_model_dir, doc)[:budget], XLMR_EOS]


def test_bert_pairs_are_the_tokenizers_longest_first_with_token_type_ids(bert: Served, texts: Texts) -> None:
    """The BERT test model exported without flags: pairs as sentence-transformers' CrossEncoder
    builds them (the tokenizer's ``longest_first`` at max_length), token_type_ids included."""
    documents = [*texts.short, *texts.long, ""]
    query = texts.long_query
    out = tokenize(bert, query, documents, [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS])
    hf = _hf_tokenizer(bert.model_dir)
    expected = hf([query] * len(documents), documents, truncation="longest_first", max_length=MAX_LENGTH)
    for row, (ids, types) in enumerate(zip(expected["input_ids"], expected["token_type_ids"], strict=True)):
        assert _unpad(out, INPUT_IDS, row) == ids, row
        assert _unpad(out, TOKEN_TYPE_IDS, row) == types, row
        n = len(ids)
        assert (out[INPUT_IDS][row, n:] == BERT_PAD).all() and not out[TOKEN_TYPE_IDS][row, n:].any()
    assert any(1 in types for types in expected["token_type_ids"])
    # The long query is cut with the long passages (both sides), and alone against an empty one.
    q = raw_ids(bert.model_dir, query)
    assert len(q) > MAX_LENGTH
    assert expected["input_ids"][len(documents) - 1] == [BERT_CLS, *q[: MAX_LENGTH - 3], BERT_SEP, BERT_SEP]
    half = (MAX_LENGTH - 3) // 2  # both sides long: each keeps half the budget, the passage the odd token
    for row, document in enumerate(texts.long, start=len(texts.short)):
        p = raw_ids(bert.model_dir, document)
        assert len(p) > MAX_LENGTH
        assert expected["input_ids"][row] == [BERT_CLS, *q[:half], BERT_SEP, *p[: MAX_LENGTH - 3 - half], BERT_SEP]


# -- tokenizer: bad input --------------------------------------------------------------------

_Q = "weather forecast for the weekend"
_D = "Rain and strong wind are expected tomorrow."
BAD_REQUESTS: dict[str, tuple[list[bytes | str], list[bytes | str], list[str]]] = {
    # id: (query, documents, phrases the message must hold)
    "no_documents": ([_Q], [], ["at least one document"]),
    "too_many_documents": ([_Q], [_D] * (MAX_DOCUMENTS + 1), ["too many documents", "split the list"]),
    "invalid_utf8": ([_Q], [_D, _D, b"caf\xe9 \xff\xfe"], ["document 2", "UTF-8"]),
    "invalid_utf8_query": ([b"\xc3\x28"], [_D], ["query", "UTF-8"]),
    "blank_query": (["  \t "], [_D], ["query is empty"]),
    "empty_query": ([""], [_D], ["query is empty"]),
    "document_too_large": (
        [_Q],
        [_D, "x" * (MAX_DOCUMENT_BYTES + 1)],
        ["document 1", str(MAX_DOCUMENT_BYTES + 1), str(MAX_DOCUMENT_BYTES)],
    ),
    "query_too_large": (["weather " * MAX_QUERY_BYTES], [_D], ["query is", str(MAX_QUERY_BYTES)]),
    "request_too_large": (
        # every document under its own limit, together over the request limit
        [_Q],
        ["k" * MAX_DOCUMENT_BYTES] * (MAX_REQUEST_BYTES // MAX_DOCUMENT_BYTES + 1),
        ["request text", str(MAX_REQUEST_BYTES)],
    ),
    "two_queries": ([_Q, _Q], [_D], ["query"]),  # refused by Triton's shape check (dims [1])
}


def assert_serves_correctly(served: Served) -> None:
    with served.client() as client:
        assert client.is_server_ready() and client.is_model_ready(TOKENIZER_MODEL_NAME)
    out = tokenize(served, _Q, [_D], [INPUT_IDS, ATTENTION_MASK])
    assert _unpad(out, INPUT_IDS, 0) == flag_pairs(served.model_dir, _Q, [_D])[0]["input_ids"]


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument(xlmr: Served, case: str) -> None:
    queries, documents, phrases = BAD_REQUESTS[case]
    inputs = [_bytes_input(QUERY, queries), _bytes_input(DOCUMENTS, documents)]
    expect_invalid(xlmr, TOKENIZER_MODEL_NAME, inputs, *phrases)
    assert_serves_correctly(xlmr)  # the server keeps serving, correctly


def test_wrong_dtype_is_invalid_argument(xlmr: Served) -> None:
    documents = _array_input(DOCUMENTS, np.array([1, 2], dtype=np.int32), "INT32")
    expect_invalid(xlmr, TOKENIZER_MODEL_NAME, [_bytes_input(QUERY, [_Q]), documents], DOCUMENTS)
    assert_serves_correctly(xlmr)


def test_bad_request_does_not_fail_concurrent_good_ones(xlmr: Served, texts: Texts) -> None:
    documents = [*texts.short, texts.long[0]]
    expected = [p["input_ids"] for p in flag_pairs(xlmr.model_dir, texts.query, documents)]

    def good() -> list[list[int]]:
        out = tokenize(xlmr, texts.query, documents, [INPUT_IDS, ATTENTION_MASK])
        return [_unpad(out, INPUT_IDS, r) for r in range(len(documents))]

    def bad() -> str:
        inputs = [_bytes_input(QUERY, [_Q]), _bytes_input(DOCUMENTS, [_D, b"\xff"])]
        return expect_invalid(xlmr, TOKENIZER_MODEL_NAME, inputs, "document 1")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(bad if i % 4 == 1 else good) for i in range(16)]
        results = [f.result() for f in futures]
    assert all(r == expected for i, r in enumerate(results) if i % 4 != 1)


def test_window_mode_refuses_too_many_rows(window: Served, texts: Texts) -> None:
    max_rows = serving_settings().max_batch_size  # the tokenizer's max_rows is reranker_model's max_batch_size
    inputs = [_bytes_input(QUERY, [texts.query]), _bytes_input(DOCUMENTS, [long_document(2000)])]
    expect_invalid(window, TOKENIZER_MODEL_NAME, inputs, f"more than {max_rows} windows")
    # a document with fewer windows passes
    out = tokenize(window, texts.query, [long_document(600)], [DOCUMENT_INDEX])
    assert 0 < len(out[DOCUMENT_INDEX]) <= max_rows


# -- the model step and the aggregation step -------------------------------------------------


def _onnx_logits(served: Served, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    path = served.repository / CORE_MODEL_NAME / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([LOGITS], inputs)[0]


def test_model_batches_requests_and_isolates_a_failing_one(window: Served, texts: Texts) -> None:
    tok = tokenize(window, texts.query, [*texts.short, texts.long[0]], [INPUT_IDS, ATTENTION_MASK])
    ids, mask = tok[INPUT_IDS], tok[ATTENTION_MASK]
    rows = ids.shape[0]
    expected = _onnx_logits(window, {INPUT_IDS: ids, ATTENTION_MASK: mask})
    assert expected.shape == (rows, 1) and np.ptp(expected) > 0.1
    bad_ids = ids.copy()
    bad_ids[0, 1] = 10**6  # outside the vocabulary: onnxruntime refuses the whole run
    workers, failing = 8, 3
    barrier = threading.Barrier(workers, timeout=CALL_TIMEOUT_S)

    def score(i: int) -> np.ndarray | str:
        # requests of different row counts (same length) share one batch
        n = 1 + i % rows
        inputs = [
            _array_input(INPUT_IDS, bad_ids[:n] if i == failing else ids[:n], "INT64"),
            _array_input(ATTENTION_MASK, mask[:n], "INT64"),
        ]
        with window.client() as client:
            client.is_server_ready()  # connect before the barrier, so the requests leave together
            barrier.wait()
            try:
                return client.infer(CORE_MODEL_NAME, inputs, client_timeout=CALL_TIMEOUT_S).as_numpy(LOGITS)
            except InferenceServerException as exc:
                return exc.message() or ""

    with window.client() as client:
        before = model_counts(client, CORE_MODEL_NAME)
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(score, range(workers)))
        after = model_counts(client, CORE_MODEL_NAME, at_least=before.requests + workers)
    assert after.requests - before.requests == workers
    assert after.executions - before.executions < workers, "the dynamic batcher did not merge any requests"
    for i, result in enumerate(results):
        if i == failing:
            assert isinstance(result, str) and CORE_MODEL_NAME in result
        else:
            n = 1 + i % rows
            assert isinstance(result, np.ndarray) and result.shape == (n, 1)
            np.testing.assert_allclose(result, expected[:n], rtol=1e-5, atol=1e-5)


def test_scores_step_takes_max_per_document(window: Served) -> None:
    # the maximum comes first for one document and last for another: neither first nor last row passes
    logits = np.array([[2.0], [0.5], [-1.0], [3.0], [-4.0], [-3.5]], dtype=np.float32)
    index = np.array([0, 0, 1, 2, 3, 3], dtype=np.int32)
    lg = _array_input(LOGITS, logits, "FP32")
    scores = infer(window, SCORES_MODEL_NAME, [lg, _array_input(DOCUMENT_INDEX, index, "INT32")], [SCORES])[SCORES]
    np.testing.assert_array_equal(scores, np.array([2.0, -1.0, 3.0, -3.5], dtype=np.float32))
    short_index = _array_input(DOCUMENT_INDEX, index[:4], "INT32")
    expect_invalid(window, SCORES_MODEL_NAME, [lg, short_index], "one document per logit row")
