"""The HTTP gateway (``reranker-gateway``) against a real Triton: the three schemas, errors, health, metrics.

Every ranking is checked against the gRPC client on the same server: the gateway adds a schema,
never a different score.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from reranker_client import RerankerClient
from reranker_common import free_port
from support import ROOT, RunningGateway, start_gateway

OPENAPI = ROOT / "docs" / "openapi.json"
TEST_MAX_LENGTH = 128  # support.TEST_TOKENIZER: pairs of at most 128 tokens, 64 documents per Triton request


@pytest.fixture(scope="module")
def example() -> Any:
    from reranker_export.testmodels import relevance_examples

    return relevance_examples(count=1, seed=7)[0]


@pytest.fixture(scope="module")
def grpc_client(triton_server: Any) -> Iterator[RerankerClient]:
    with RerankerClient(triton_server.grpc_url) as client:
        yield client


def post(gateway: RunningGateway, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", json=body, timeout=60, **kwargs)


def expected(client: RerankerClient, query: str, documents: list[str], **kwargs: Any) -> list[tuple[int, float]]:
    return [(hit.index, hit.score) for hit in client.rerank(query, documents, **kwargs)]


def pairs(results: list[dict[str, Any]], score: str = "relevance_score") -> list[tuple[int, float]]:
    return [(item["index"], item[score]) for item in results]


def assert_same_ranking(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [index for index, _ in got] == [index for index, _ in want]
    assert [score for _, score in got] == pytest.approx([score for _, score in want], abs=1e-6)


# -- the three schemas ---------------------------------------------------------------------------


def test_v1_ranks_as_the_grpc_client_with_sigmoid_scores(
    gateway: RunningGateway, grpc_client: RerankerClient, example: Any
) -> None:
    documents = list(example.documents)
    response = post(gateway, "/v1/rerank", {"model": "reranker", "query": example.query, "documents": documents})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "reranker" and body["id"]
    assert body["usage"] == {"documents": len(documents), "search_units": 1}
    assert_same_ranking(pairs(body["results"]), expected(grpc_client, example.query, documents, normalize=True))
    assert body["results"][0]["index"] == example.relevant_index  # the trained model finds the relevant one
    assert all(0 < item["relevance_score"] < 1 and "document" not in item for item in body["results"])


def test_v1_document_objects_top_n_and_raw_scores(
    gateway: RunningGateway, grpc_client: RerankerClient, example: Any
) -> None:
    documents = [{"text": text, "id": f"doc-{i}", "source": "kb"} for i, text in enumerate(example.documents)]
    body = {"query": example.query, "documents": documents, "top_n": 2, "return_documents": True, "raw_scores": True}
    response = post(gateway, "/v1/rerank", body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    want = expected(grpc_client, example.query, list(example.documents), top_n=2)
    assert_same_ranking(pairs(results), want)  # raw logits: no sigmoid
    for item in results:  # object documents come back whole, extra fields included
        assert item["document"] == documents[item["index"]]


def test_v2_ranks_and_honours_or_rejects_max_tokens_per_doc(
    gateway: RunningGateway, grpc_client: RerankerClient, example: Any
) -> None:
    documents = list(example.documents)
    want = expected(grpc_client, example.query, documents, normalize=True, top_n=3)
    body = {"model": "reranker", "query": example.query, "documents": documents, "top_n": 3}
    for honoured in (None, 4096, TEST_MAX_LENGTH - 4):  # the server keeps at most 124 tokens per document
        response = post(gateway, "/v2/rerank", {**body, "max_tokens_per_doc": honoured})
        assert response.status_code == 200, response.text
        assert_same_ranking(pairs(response.json()["results"]), want)
        assert response.json()["meta"]["api_version"]["version"] == "2"
    response = post(gateway, "/v2/rerank", {**body, "max_tokens_per_doc": 16})
    assert response.status_code == 422
    assert "max_tokens_per_doc=16" in response.json()["message"] and "124" in response.json()["message"]


def test_tei_returns_a_bare_array(gateway: RunningGateway, grpc_client: RerankerClient, example: Any) -> None:
    texts = list(example.documents)
    response = post(gateway, "/rerank", {"query": example.query, "texts": texts, "return_text": True})
    assert response.status_code == 200, response.text
    ranks = response.json()
    assert isinstance(ranks, list) and len(ranks) == len(texts)
    assert_same_ranking(pairs(ranks, "score"), expected(grpc_client, example.query, texts, normalize=True))
    assert all(item["text"] == texts[item["index"]] for item in ranks)
    raw = post(gateway, "/rerank", {"query": example.query, "texts": texts, "raw_scores": True}).json()
    assert_same_ranking(pairs(raw, "score"), expected(grpc_client, example.query, texts))
    assert all("text" not in item for item in raw)


def test_any_number_of_documents_is_split_and_ties_go_to_the_lower_index(
    gateway: RunningGateway, grpc_client: RerankerClient, example: Any
) -> None:
    # 150 documents: three Triton requests of at most 64. Every text appears many times over, so
    # equal scores must come back in index order, as the client ranks them.
    documents = [example.documents[i % len(example.documents)] for i in range(150)]
    response = post(gateway, "/rerank", {"query": example.query, "texts": documents, "raw_scores": True})
    assert response.status_code == 200, response.text
    got = pairs(response.json(), "score")
    assert_same_ranking(got, expected(grpc_client, example.query, documents))
    for (index_a, score_a), (index_b, score_b) in itertools.pairwise(got):
        assert score_a > score_b or (score_a == score_b and index_a < index_b)


# -- errors a user of those APIs expects ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"documents": ["a"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q", "documents": ["a", 3]}, "documents.1"),
        ({"query": "q", "documents": [{"title": "no text"}]}, "documents.0"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
        ({"query": 5, "documents": ["a"]}, "query"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(gateway: RunningGateway, body: dict[str, Any], field: str) -> None:
    response = post(gateway, "/v1/rerank", body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}")
    assert any(".".join(map(str, e["loc"][1:])).startswith(field) for e in response.json()["detail"])


def test_malformed_json_unknown_model_and_bad_text_are_client_errors(gateway: RunningGateway) -> None:
    broken = httpx.post(
        f"{gateway.url}/v1/rerank",
        content=b'{"query": "q", "documents": [',
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["message"]
    unknown = post(gateway, "/v1/rerank", {"model": "rerank-v3.5", "query": "q", "documents": ["a"]})
    assert unknown.status_code == 404 and "'reranker'" in unknown.json()["message"]
    # A lone surrogate is valid JSON but not Unicode text: the client refuses it before sending.
    surrogate = httpx.post(
        f"{gateway.url}/v1/rerank",
        content=b'{"query": "\\ud800", "documents": ["a"]}',
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 400 and "not valid Unicode" in surrogate.json()["message"]
    # Over the server's 64 KiB per document: Triton answers INVALID_ARGUMENT, the gateway 400.
    huge = post(gateway, "/v1/rerank", {"query": "q", "documents": ["x" * 70_000]})
    assert huge.status_code == 400 and "INVALID_ARGUMENT" in huge.json()["message"]
    left = post(gateway, "/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Left"})
    assert left.status_code == 422 and left.json()["error_type"] == "Validation"
    assert "truncation_direction" in left.json()["error"]
    fields = post(gateway, "/v1/rerank", {"query": "q", "documents": [{"text": "a"}], "rank_fields": ["title"]})
    assert fields.status_code == 422 and "rank_fields" in fields.json()["message"]


@pytest.fixture(scope="module")
def guarded(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway with two API keys, a 4 KiB body limit and at most 8 documents per request."""
    running = start_gateway(
        triton_server.grpc_url,
        tmp_path_factory.mktemp("guarded"),
        "--max-body-bytes",
        "4096",
        "--max-documents",
        "8",
        "--model-name",
        "bge-test",
        env={"RERANKER_GATEWAY_API_KEYS": "first-key,second-key"},
    )
    yield running
    running.stop()


def test_bearer_keys_body_and_document_limits(guarded: RunningGateway) -> None:
    body = {"model": "bge-test", "query": "q", "documents": ["a", "b"]}
    missing = post(guarded, "/v2/rerank", body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = post(guarded, "/v2/rerank", body, headers={"Authorization": "Bearer first-keyX"})
    assert wrong.status_code == 401
    for key in ("first-key", "second-key"):
        assert post(guarded, "/v2/rerank", body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    auth = {"Authorization": "Bearer second-key"}
    too_big = post(guarded, "/v1/rerank", {"query": "q", "documents": ["x" * 5000]}, headers=auth)
    assert too_big.status_code == 413 and "4096 bytes" in too_big.json()["message"]
    chunks = iter([b'{"query": "q", "documents": ["', b"x" * 5000, b'"]}'])  # no Content-Length: chunked
    streamed = httpx.post(
        f"{guarded.url}/v1/rerank", content=chunks, headers={**auth, "content-type": "application/json"}
    )
    assert streamed.status_code == 413 and "4096 bytes" in streamed.json()["message"]
    too_many = post(guarded, "/v1/rerank", {"query": "q", "documents": ["a"] * 9}, headers=auth)
    assert too_many.status_code == 413 and "limit of 8" in too_many.json()["message"]
    tei = post(guarded, "/rerank", {"query": "q", "texts": ["a"] * 9}, headers=auth)
    assert tei.status_code == 413 and tei.json()["error_type"] == "Validation"
    # Probes and scrapes need no key.
    assert httpx.get(f"{guarded.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{guarded.url}/metrics", timeout=30).status_code == 200


def test_unreachable_triton_is_503_with_retry_after(tmp_path: Path) -> None:
    # One attempt: the answer is the UNAVAILABLE itself, not a deadline that a retry's backoff ran into.
    dead = start_gateway(f"127.0.0.1:{free_port()}", tmp_path, "--max-attempts", "1", "--health-timeout", "1")
    try:
        response = post(dead, "/v1/rerank", {"query": "q", "documents": ["a"]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "UNAVAILABLE" in response.json()["message"]
        tei = post(dead, "/rerank", {"query": "q", "texts": ["a"]})
        assert tei.status_code == 503 and tei.json()["error_type"] == "Overloaded"
        health = httpx.get(f"{dead.url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert httpx.get(f"{dead.url}/livez", timeout=30).status_code == 200
    finally:
        dead.stop()


def test_deadline_is_504(triton_server: Any, tmp_path: Path) -> None:
    hurried = start_gateway(triton_server.grpc_url, tmp_path, "--timeout", "0.000001")
    try:
        response = post(hurried, "/v1/rerank", {"query": "q", "documents": ["a"]})
        assert response.status_code == 504, response.text
        assert "DEADLINE_EXCEEDED" in response.json()["message"] or "deadline" in response.json()["message"]
    finally:
        hurried.stop()


# -- health, info, metrics, OpenAPI ---------------------------------------------------------------


def test_health_info_and_metrics(gateway: RunningGateway) -> None:
    health = httpx.get(f"{gateway.url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["canary_ms"] > 0
    info = httpx.get(f"{gateway.url}/info", timeout=30).json()
    assert info["max_length"] == TEST_MAX_LENGTH and info["overflow"] == "truncate"
    assert info["triton_max_documents"] == 64 and info["max_documents_per_request"] == 10_000
    post(gateway, "/v1/rerank", {"query": "q", "documents": ["a", "b", "c"]})
    post(gateway, "/v1/rerank", {"query": "q"})
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples['reranker_gateway_requests_total{endpoint="/v1/rerank",status="200"}'] >= 1
    assert samples['reranker_gateway_errors_total{endpoint="/v1/rerank",reason="validation",status="422"}'] >= 1
    assert samples['reranker_gateway_documents_per_request_bucket{endpoint="/v1/rerank",le="5.0"}'] >= 1
    assert samples['reranker_gateway_request_duration_seconds_count{endpoint="/v1/rerank"}'] >= 2


def test_openapi_is_served_and_checked_in(gateway: RunningGateway) -> None:
    served = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    assert served == json.loads(OPENAPI.read_text()), "regenerate: reranker-gateway --print-openapi > docs/openapi.json"
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/health", "/metrics"} <= served.keys() | served["paths"].keys()


# -- limits the gateway reads from the server, and the CLI ------------------------------------------


def test_limit_parameters_are_the_rendered_ones(cpu_repository: Path, window_repository: Path) -> None:
    from reranker_gateway.limits import CannotHonourError, Overflow, parse_limits

    def limits(repository: Path) -> Any:
        config = model_config_pb2.ModelConfig()
        text_format.Parse((repository / "reranker_tokenizer" / "config.pbtxt").read_text(), config)
        return parse_limits(config)

    truncating = limits(cpu_repository)
    assert (truncating.max_length, truncating.overflow, truncating.max_documents) == (128, Overflow.TRUNCATE, 64)
    truncating.check_max_chunks_per_doc(3)
    window = limits(window_repository)
    assert window.overflow is Overflow.WINDOW
    with pytest.raises(CannotHonourError, match="window mode"):
        window.check_max_tokens_per_doc(4096)
    with pytest.raises(CannotHonourError, match="window mode"):
        window.check_max_chunks_per_doc(1)


def test_cli_help_and_usage_errors(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reranker_gateway", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", **env},
        )

    help_run = run("--help")
    assert help_run.returncode == 0 and "--triton" in help_run.stdout
    assert "(default: None)" not in " ".join(help_run.stdout.split())
    missing = run()
    assert missing.returncode == 2 and "--triton HOST:PORT is required" in missing.stderr
    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n")
    no_keys = run("--triton", "localhost:1", "--api-key-file", str(empty))
    assert no_keys.returncode == 2 and "holds no key" in no_keys.stderr
    assert run("--triton", "localhost:1", "--timeout", "0").returncode == 2
    busy = subprocess.run(  # the port is taken: exit 1, one line, no traceback
        [
            sys.executable,
            "-c",
            "import socket,subprocess,sys;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();"
            "sys.exit(subprocess.run([sys.executable,'-m','reranker_gateway','--triton','localhost:1','--port',"
            "str(s.getsockname()[1]),'--log-level','critical']).returncode)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert busy.returncode == 1 and "could not start" in busy.stderr and "Traceback" not in busy.stderr


def test_scores_are_finite_json_numbers(gateway: RunningGateway, example: Any) -> None:
    body = post(gateway, "/v1/rerank", {"query": example.query, "documents": list(example.documents)}).json()
    assert all(math.isfinite(item["relevance_score"]) for item in body["results"])


@pytest.mark.parametrize(
    ("error", "status", "reason", "retry_after"),
    [
        ("InvalidInputError", 400, "invalid_input", False),
        ("OverloadedError", 503, "overloaded", True),
        ("ServerUnavailableError", 503, "serverunavailable", True),
        ("ModelNotReadyError", 503, "model_not_ready", True),
        ("DeadlineExceededError", 504, "deadline_exceeded", False),
        ("ServerError", 502, "upstream_error", False),
    ],
)
def test_every_client_error_has_its_status(error: str, status: int, reason: str, retry_after: bool) -> None:
    import reranker_client
    from reranker_gateway.errors import from_client_error

    answer = from_client_error(getattr(reranker_client, error)("boom"), retry_after_s=2)
    assert (answer.status, answer.reason) == (status, reason)
    assert answer.headers == ({"Retry-After": "2"} if retry_after else {})
