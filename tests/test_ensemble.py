"""The rendered ``cpu`` repository end to end: the ``reranker`` ensemble in a real Triton server.

Everything goes through ``tritonclient.grpc`` straight to the ensemble (not the project client):
score parity with FlagEmbedding's ``FlagReranker`` for the XLM-R test model (the BERT test
model's parity with sentence-transformers' ``CrossEncoder``, its family's library, is in
test_families.py), ranking quality of the trained tiny model, dynamic batching under concurrent
clients, bad input answered with ``INVALID_ARGUMENT`` by a server that keeps serving, and
long-document (window) mode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from reranker_export.settings import (
    CORE_MODEL_NAME,
    DOCUMENTS,
    ENSEMBLE_NAME,
    QUERY,
    SCORES,
)
from reranker_export.testmodels import (
    LANGUAGES,
    TOPICS,
    corpus,
    long_document,
    multilingual_probe_pairs,
    relevance_examples,
)
from support import TEST_TOKENIZER, WINDOW_STRIDE, model_counts

# Model building, export and server start-up are paid by whichever test first asks for a fixture.
pytestmark = pytest.mark.timeout(600)

CALL_TIMEOUT_S = 60.0  # per gRPC call: a hung server fails the test instead of stalling the run
MAX_LENGTH = TEST_TOKENIZER.max_length  # 128, the session repository's
QUERY_MAX_LENGTH = TEST_TOKENIZER.effective_query_max_length  # 96
PARITY_ATOL = 1e-4


# --------------------------------------------------------------------------------------------
# Calling the ensemble
# --------------------------------------------------------------------------------------------


def _bytes_array(texts: Sequence[str | bytes]) -> np.ndarray:
    return np.array([t.encode("utf-8") if isinstance(t, str) else t for t in texts], dtype=np.object_)


def infer_raw(
    client: Any, query: np.ndarray, documents: np.ndarray, *, query_dtype: str = "BYTES", documents_dtype: str = "BYTES"
) -> np.ndarray:
    """One ``reranker`` call with the tensors exactly as given (any shape or dtype)."""
    inputs = [
        grpcclient.InferInput(QUERY, list(query.shape), query_dtype),
        grpcclient.InferInput(DOCUMENTS, list(documents.shape), documents_dtype),
    ]
    inputs[0].set_data_from_numpy(query)
    inputs[1].set_data_from_numpy(documents)
    result = client.infer(
        ENSEMBLE_NAME, inputs, outputs=[grpcclient.InferRequestedOutput(SCORES)], client_timeout=CALL_TIMEOUT_S
    )
    scores = result.as_numpy(SCORES)
    assert scores is not None
    return scores


def rerank(client: Any, query: str | bytes, documents: Sequence[str | bytes]) -> np.ndarray:
    scores = infer_raw(client, _bytes_array([query]), _bytes_array(documents))
    assert scores.dtype == np.float32 and scores.shape == (len(documents),)
    return scores


def score_pairs(client: Any, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Scores of (query, passage) pairs, one ensemble call per distinct query, in pair order."""
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(i)
    scores = np.empty(len(pairs), dtype=np.float32)
    for query, rows in by_query.items():
        scores[rows] = rerank(client, query, [pairs[i][1] for i in rows])
    return scores


@pytest.fixture(scope="module")
def client(triton_server: Any) -> Iterator[Any]:
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as c:
        yield c


# --------------------------------------------------------------------------------------------
# References: FlagReranker, and the same model in PyTorch on pairs built here
# --------------------------------------------------------------------------------------------


class TorchReference:
    """The model in PyTorch, fed pairs built with the model's own tokenizer, independently of the server.

    A pair is FlagReranker's (query without special tokens cut to query_max_length, passage
    without special tokens, the tokenizer's pair template, ``only_second`` truncation to
    max_length) built on ids with the ``tokenizers`` post-processor; ``start`` picks a window.
    """

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # A private copy of the fast tokenizer: the saved one carries a 512-token truncation.
        self.tokenizer = Tokenizer.from_str(self.hf_tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
        self.num_special = self.tokenizer.num_special_tokens_to_add(True)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def passage_budget(self, query: str) -> int:
        return MAX_LENGTH - min(len(self.ids(query)), QUERY_MAX_LENGTH) - self.num_special

    def score(self, query: str, passage: str, start: int = 0) -> float:
        import torch

        q = self.tokenizer.encode(query, add_special_tokens=False)
        q.truncate(QUERY_MAX_LENGTH)
        p = self.tokenizer.encode(passage, add_special_tokens=False)
        budget = self.passage_budget(query)
        p.truncate(start + budget)
        p.truncate(budget, direction="left")
        pair = self.tokenizer.post_process(q, p, add_special_tokens=True)
        assert len(pair.ids) <= MAX_LENGTH
        inputs = {
            "input_ids": torch.tensor([pair.ids]),
            "attention_mask": torch.ones(1, len(pair.ids), dtype=torch.long),
        }
        if "token_type_ids" in self.hf_tokenizer.model_input_names:
            inputs["token_type_ids"] = torch.tensor([pair.type_ids])
        with torch.inference_mode():
            return float(self.model(**inputs).logits.view(-1)[0])

    def flag_round_trip_is_exact(self, query: str, passage: str) -> bool:
        """Whether transformers-5 FlagReranker scores the pair it means to.

        With transformers 5, FlagEmbedding's ``prepare_for_model_compat`` decodes the query and
        passage ids back to text and tokenizes the pair again; where the text does not survive
        that (``<unk>`` next to other text: the tiny test vocabulary has no digits or brackets),
        FlagReranker scores different tokens than its own truncated ids.
        """
        tok = self.hf_tokenizer

        def survives(ids: list[int]) -> bool:
            text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            return list(tok(text, add_special_tokens=False).input_ids) == ids

        return survives(self.ids(query)[:QUERY_MAX_LENGTH]) and survives(self.ids(passage)[:MAX_LENGTH])


def parity_pairs() -> list[tuple[str, str]]:
    """Probe pairs (six languages, long passages, long queries) and held-out ranking pairs.

    No empty documents: transformers 5 FlagReranker re-tokenizes the passage and drops an empty
    one, so its score for ``(q, "")`` is not the pair ``<s> q </s></s></s>`` the server scores.
    """
    pairs = list(multilingual_probe_pairs())
    for example in relevance_examples(seed=7, count=6):
        pairs.extend((example.query, document) for document in example.documents)
    return [(q, p) for q, p in pairs if p]


def flag_scores(model_dir: Path, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    from FlagEmbedding import FlagReranker

    reranker = FlagReranker(str(model_dir), use_fp16=False, devices=["cpu"])
    return np.asarray(reranker.compute_score(list(pairs), max_length=MAX_LENGTH), dtype=np.float64)


def assert_matches_flagreranker(client: Any, model_dir: Path, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Served scores equal FlagReranker's, except where FlagReranker garbles the pair (see below).

    Returns the mask of the pairs compared with FlagReranker itself.
    """
    reference = TorchReference(model_dir)
    served = score_pairs(client, pairs)
    exact = np.array([reference.flag_round_trip_is_exact(q, p) for q, p in pairs])
    assert exact.sum() >= 0.75 * len(pairs), "FlagReranker's text round trip changes too many pairs to compare"
    expected = flag_scores(model_dir, [pair for pair, ok in zip(pairs, exact, strict=True) if ok])
    np.testing.assert_allclose(served[exact], expected, rtol=0, atol=PARITY_ATOL)
    # The pairs FlagReranker garbles: its model on the pairs FlagReranker means (its own truncated ids).
    for i in np.flatnonzero(~exact):
        assert served[i] == pytest.approx(reference.score(*pairs[i]), abs=PARITY_ATOL), pairs[i]
    return exact


def check_flag_parity(client: Any, model_dir: Path) -> None:
    pairs = parity_pairs()
    reference = TorchReference(model_dir)
    # The set holds a query past query_max_length and passages that truncate.
    lengths = np.array([(len(reference.ids(q)), len(reference.ids(p))) for q, p in pairs])
    long_query = lengths[:, 0] > QUERY_MAX_LENGTH
    truncates = np.minimum(lengths[:, 0], QUERY_MAX_LENGTH) + lengths[:, 1] + reference.num_special > MAX_LENGTH
    # Not all equal: a constant output would "match" a constant reference.
    assert np.ptp(score_pairs(client, pairs)) > 0.1
    exact = assert_matches_flagreranker(client, model_dir, pairs)
    # FlagReranker itself was compared on a query past query_max_length and on passages that truncate.
    assert np.any(exact & long_query) and np.sum(exact & truncates) >= 3


def test_xlmr_scores_equal_flagreranker(client: Any, xlmr_model_dir: Path) -> None:
    check_flag_parity(client, xlmr_model_dir)


def test_empty_document_gets_a_finite_score(client: Any, xlmr_model_dir: Path) -> None:
    query = "weather forecast"
    scores = rerank(client, query, ["", "Rain and wind tomorrow.", " "])
    assert np.all(np.isfinite(scores))
    # The pair with no passage tokens, <s> q </s></s></s>, as the model scores it directly.
    assert scores[0] == pytest.approx(TorchReference(xlmr_model_dir).score(query, ""), abs=PARITY_ATOL)
    assert scores[2] == pytest.approx(scores[0], abs=1e-6)


# --------------------------------------------------------------------------------------------
# Ranking quality
# --------------------------------------------------------------------------------------------


def test_trained_model_ranks_the_relevant_document_first(client: Any) -> None:
    examples = relevance_examples()
    hits = [int(np.argmax(rerank(client, e.query, e.documents))) == e.relevant_index for e in examples]
    assert sum(hits) >= 0.8 * len(examples), f"relevant document first in {sum(hits)}/{len(examples)}"


# --------------------------------------------------------------------------------------------
# Dynamic batching under concurrent clients
# --------------------------------------------------------------------------------------------


def test_concurrent_clients_get_their_own_scores_and_batches_merge(client: Any, triton_server: Any) -> None:
    workers = 32
    examples = relevance_examples(seed=11, count=workers)
    # Different candidate lists per client: other queries, lengths and orders (some rotated).
    requests = [(e.query, list(e.documents[i % 3 :] + e.documents[: i % 3])) for i, e in enumerate(examples)]
    start = model_counts(client, CORE_MODEL_NAME)
    alone = [rerank(client, q, docs) for q, docs in requests]

    before = model_counts(client, CORE_MODEL_NAME, at_least=start.requests + workers)
    barrier = threading.Barrier(workers, timeout=CALL_TIMEOUT_S)

    def call(i: int) -> np.ndarray:
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as own:
            own.is_server_ready()  # connect before the barrier, so the requests leave together
            barrier.wait()
            return rerank(own, *requests[i])

    with ThreadPoolExecutor(workers) as pool:
        together = list(pool.map(call, range(workers)))
    after = model_counts(client, CORE_MODEL_NAME, at_least=before.requests + workers)

    for i, (got, expected) in enumerate(zip(together, alone, strict=True)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"client {i}")
    requests_seen = after.requests - before.requests
    executions = after.executions - before.executions
    assert requests_seen >= workers
    assert executions < requests_seen, f"{executions} executions for {requests_seen} requests: nothing merged"


# --------------------------------------------------------------------------------------------
# Bad input: INVALID_ARGUMENT, and the server keeps serving
# --------------------------------------------------------------------------------------------

_DOC = _bytes_array(["Rain and strong wind are expected tomorrow."])
_Q = _bytes_array(["weather forecast"])
BAD_INPUTS: dict[str, tuple[np.ndarray, np.ndarray, str, str, str]] = {
    # id: (query, documents, query dtype, documents dtype, expected part of the message)
    "no-documents": (_Q, np.array([], dtype=np.object_), "BYTES", "BYTES", "'documents' is empty"),
    "too-many-documents": (_Q, _bytes_array(["doc"] * 65), "BYTES", "BYTES", "too many documents: 65 > 64"),
    "document-not-utf8": (
        _Q,
        _bytes_array([b"ok", b"caf\xe9 \xff"]),
        "BYTES",
        "BYTES",
        "document 1 is not valid UTF-8",
    ),
    "query-not-utf8": (_bytes_array([b"\xc3\x28"]), _DOC, "BYTES", "BYTES", "query is not valid UTF-8"),
    "empty-query": (_bytes_array([""]), _DOC, "BYTES", "BYTES", "query is empty"),
    "blank-query": (_bytes_array([" \t\n"]), _DOC, "BYTES", "BYTES", "query is empty"),
    "document-over-byte-limit": (
        _Q,
        _bytes_array(["ok", "x" * (TEST_TOKENIZER.max_document_bytes + 1)]),
        "BYTES",
        "BYTES",
        f"document 1 is {TEST_TOKENIZER.max_document_bytes + 1} bytes, over the limit",
    ),
    "request-over-byte-limit": (
        # Every document under its own limit, together over the request limit.
        _Q,
        _bytes_array(["y" * (TEST_TOKENIZER.max_document_bytes - 1)] * 33),
        "BYTES",
        "BYTES",
        f"over the limit of {TEST_TOKENIZER.max_request_bytes}",
    ),
    "query-two-elements": (_bytes_array(["a", "b"]), _DOC, "BYTES", "BYTES", "Expected [1], got [2]"),
    "documents-two-dimensional": (_Q, _bytes_array(["a", "b"]).reshape(2, 1), "BYTES", "BYTES", "got [2,1]"),
    "documents-int32": (_Q, np.array([1, 2], dtype=np.int32), "BYTES", "INT32", "'INT32', but model 'reranker'"),
    "documents-fp32": (_Q, np.array([1.0], dtype=np.float32), "BYTES", "FP32", "'FP32', but model 'reranker'"),
    "query-fp32": (np.array([1.0], dtype=np.float32), _DOC, "FP32", "BYTES", "'FP32', but model 'reranker'"),
}


@pytest.fixture(scope="module")
def good_request(client: Any) -> tuple[str, list[str], np.ndarray]:
    example = relevance_examples(seed=5, count=1)[0]
    return example.query, list(example.documents), rerank(client, example.query, example.documents)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_invalid_argument_and_server_keeps_serving(
    case: str, client: Any, good_request: tuple[str, list[str], np.ndarray]
) -> None:
    query, documents, query_dtype, documents_dtype, message = BAD_INPUTS[case]
    with pytest.raises(InferenceServerException) as raised:
        infer_raw(client, query, documents, query_dtype=query_dtype, documents_dtype=documents_dtype)
    assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT), raised.value
    assert message in (raised.value.message() or ""), raised.value.message()

    assert client.is_server_ready() and client.is_model_ready(ENSEMBLE_NAME)
    good_query, good_documents, expected = good_request
    np.testing.assert_allclose(rerank(client, good_query, good_documents), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Long documents: window mode
# --------------------------------------------------------------------------------------------


def _held_out(topic: str, language: str, kind: str) -> list[str]:
    return [e.text for e in corpus() if (e.topic, e.language, e.kind, e.split) == (topic, language, kind, "test")]


def late_relevant_document(topic: str, language: str) -> tuple[str, str]:
    """(query, document): the document opens with other topics; its on-topic section comes last.

    The on-topic section (every passage of the topic in that language, twice) is longer than
    one window, so some window holds nothing else.
    """
    filler = [text for other in TOPICS if other != topic for text in _held_out(other, language, "passage")]
    on_topic = [e.text for e in corpus() if (e.topic, e.language, e.kind) == (topic, language, "passage")]
    return _held_out(topic, language, "query")[0], " ".join([*filler, *on_topic, *on_topic])


def torch_window_scores(model_dir: Path, query: str, document: str, stride: int) -> np.ndarray:
    """Logits of every window of ``document``, built and scored with transformers alone.

    Windows as the design describes them: the passage budget left after the query and the
    special tokens, a window starting every ``stride`` tokens, the last one ending at the
    passage end; each window paired with the query as FlagReranker pairs a passage.
    """
    reference = TorchReference(model_dir)
    n, budget = len(reference.ids(document)), reference.passage_budget(query)
    assert n > 2 * budget, "the document must need several windows"
    starts = [*range(0, n - budget, min(stride, budget)), n - budget]
    return np.asarray([reference.score(query, document, start) for start in starts])


def test_window_mode_scores_a_long_document_by_its_best_window(
    window_server: Any, client: Any, xlmr_model_dir: Path
) -> None:
    query, long_doc = late_relevant_document("space", "en")
    short_docs = [_held_out("space", "en", "passage")[1], _held_out("cooking", "en", "passage")[0]]
    documents = [short_docs[0], long_doc, short_docs[1], long_document(300)]

    with grpcclient.InferenceServerClient(window_server.grpc_url) as window_client:
        windowed = rerank(window_client, query, documents)
    truncated = rerank(client, query, documents)

    windows = torch_window_scores(xlmr_model_dir, query, long_doc, WINDOW_STRIDE)
    # The server's score is the best of the document's windows, each scored independently.
    assert windowed[1] == pytest.approx(windows.max(), abs=PARITY_ATOL)
    # The first window is the truncated pair: truncation is one window of window mode.
    assert windows[0] == pytest.approx(truncated[1], abs=PARITY_ATOL)
    # The on-topic passage sits past the truncation point: a later window finds it.
    assert int(np.argmax(windows)) > 0 and windowed[1] > truncated[1] + 1.0, windows
    # Documents that fit score as in truncate mode, and every score stays in its input slot.
    np.testing.assert_allclose(windowed[[0, 2]], truncated[[0, 2]], rtol=0, atol=1e-5)
    assert windowed[3] >= truncated[3] - 1e-5


def test_truncate_mode_matches_flagreranker_on_the_long_document(client: Any, xlmr_model_dir: Path) -> None:
    pairs = [late_relevant_document(topic, language) for topic in TOPICS[:2] for language in LANGUAGES[:3]]
    assert_matches_flagreranker(client, xlmr_model_dir, pairs)
