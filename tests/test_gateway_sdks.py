"""Real SDKs pointed at the gateway, against a real Triton: the official ``cohere`` SDK (v1 and v2
clients, sync and async), LangChain's ``CohereRerank`` and Haystack's ``CohereRanker``.

Each sends a real rerank through the SDK and checks the ranking and the scores against the gRPC
client on the same server. Nothing phones home: Haystack's telemetry and LangSmith tracing are off
before either is imported (Haystack decides at import time), and the test checks Haystack's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reranker_client import RerankerClient
from reranker_common import free_port
from support import ROOT, RunningGateway, start_gateway

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"
os.environ["LANGSMITH_TRACING"] = "false"
os.environ["LANGCHAIN_TRACING_V2"] = "false"
os.environ.pop("CO_API_URL", None)

MODEL = "reranker"
KEY = "sdk-test-key"  # the SDKs require one; the default gateway takes any


@pytest.fixture(scope="module")
def example() -> Any:
    from reranker_export.testmodels import relevance_examples

    return relevance_examples(count=1, seed=11)[0]


@pytest.fixture(scope="module")
def want(triton_server: Any, example: Any) -> list[tuple[int, float]]:
    """The gRPC client's ranking: sigmoid scores, best first, ties by index."""
    with RerankerClient(triton_server.grpc_url) as client:
        hits = client.rerank(example.query, list(example.documents), normalize=True)
    return [(hit.index, hit.score) for hit in hits]


def check(got: list[tuple[int, float]], want: list[tuple[int, float]], top_n: int | None = None) -> None:
    expected = want[:top_n] if top_n is not None else want
    assert [index for index, _ in got] == [index for index, _ in expected]
    assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=1e-6)


def test_cohere_v1_client(gateway: RunningGateway, example: Any, want: list[tuple[int, float]]) -> None:
    import cohere

    client = cohere.Client(api_key=KEY, base_url=gateway.url)
    documents = [{"text": text} for text in example.documents]
    response = client.rerank(model=MODEL, query=example.query, documents=documents, top_n=3, return_documents=True)
    check([(r.index, r.relevance_score) for r in response.results], want, top_n=3)
    assert all(r.document is not None and r.document.text == example.documents[r.index] for r in response.results)
    assert response.id and response.meta is not None and response.meta.billed_units is not None


def test_cohere_v2_client_sync_and_async(gateway: RunningGateway, example: Any, want: list[tuple[int, float]]) -> None:
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=gateway.url)
    response = client.rerank(model=MODEL, query=example.query, documents=list(example.documents))
    check([(r.index, r.relevance_score) for r in response.results], want)

    async def call() -> Any:
        async_client = cohere.AsyncClientV2(api_key=KEY, base_url=gateway.url)
        return await async_client.rerank(
            model=MODEL, query=example.query, documents=list(example.documents), top_n=2, max_tokens_per_doc=4096
        )

    check([(r.index, r.relevance_score) for r in asyncio.run(call()).results], want, top_n=2)


def test_cohere_sdk_sees_typed_errors(gateway: RunningGateway, tmp_path: Path) -> None:
    import cohere
    from cohere.errors import NotFoundError, ServiceUnavailableError, UnprocessableEntityError

    client = cohere.ClientV2(api_key=KEY, base_url=gateway.url)
    with pytest.raises(NotFoundError) as unknown:
        client.rerank(model="rerank-v3.5", query="q", documents=["a"])
    assert "'reranker'" in unknown.value.body["message"]
    with pytest.raises(UnprocessableEntityError) as bad:
        client.rerank(model=MODEL, query="q", documents=["a"], top_n=0)
    assert bad.value.body["message"].startswith("top_n")
    dead = start_gateway(f"127.0.0.1:{free_port()}", tmp_path, "--max-attempts", "1")
    try:
        unavailable = cohere.ClientV2(api_key=KEY, base_url=dead.url)
        with pytest.raises(ServiceUnavailableError) as shed:
            unavailable.rerank(model=MODEL, query="q", documents=["a"], request_options={"max_retries": 0})
        assert shed.value.headers is not None and shed.value.headers["retry-after"] == "1"
    finally:
        dead.stop()


def test_langchain_cohere_rerank(gateway: RunningGateway, example: Any, want: list[tuple[int, float]]) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(model=MODEL, cohere_api_key=KEY, base_url=gateway.url, top_n=3)
    documents = [Document(page_content=text, metadata={"position": i}) for i, text in enumerate(example.documents)]
    compressed = reranker.compress_documents(documents, example.query)
    check([(doc.metadata["position"], doc.metadata["relevance_score"]) for doc in compressed], want, top_n=3)


def test_haystack_cohere_ranker(gateway: RunningGateway, example: Any, want: list[tuple[int, float]]) -> None:
    import haystack.telemetry._telemetry as haystack_telemetry
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    assert haystack_telemetry.telemetry is None  # no posthog events from this test run
    # CohereRanker always sends max_tokens_per_doc (4096 by default): the gateway honours it.
    ranker = CohereRanker(model=MODEL, api_key=Secret.from_token(KEY), api_base_url=gateway.url, top_k=4)
    documents = [Document(content=text, meta={"position": i}) for i, text in enumerate(example.documents)]
    ranked = ranker.run(query=example.query, documents=documents)["documents"]
    check([(doc.meta["position"], doc.score) for doc in ranked], want, top_n=4)


@pytest.fixture(scope="module")
def keyed(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = start_gateway(
        triton_server.grpc_url, tmp_path_factory.mktemp("keyed"), env={"RERANKER_GATEWAY_API_KEYS": KEY}
    )
    yield running
    running.stop()


def test_sdk_api_key_is_the_bearer_token(keyed: RunningGateway, example: Any, want: list[tuple[int, float]]) -> None:
    import cohere
    from cohere.errors import UnauthorizedError

    response = cohere.ClientV2(api_key=KEY, base_url=keyed.url).rerank(
        model=MODEL, query=example.query, documents=list(example.documents)
    )
    check([(r.index, r.relevance_score) for r in response.results], want)
    with pytest.raises(UnauthorizedError):
        cohere.ClientV2(api_key="not-the-key", base_url=keyed.url).rerank(
            model=MODEL, query="q", documents=["a"], request_options={"max_retries": 0}
        )


# -- the examples of docs/gateway.md, as written (only the base URL is this test's gateway) --------

DOCS = ROOT / "docs" / "gateway.md"
DOCS_URL = "http://localhost:8080"
TRAIN = "A railway ticket for children is cheaper, and dogs travel for free on the train."


def docs_example(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    (block,) = [b for b in blocks if marker in b]
    assert DOCS_URL in block
    return block


def run_example(gateway: RunningGateway, command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_docs_curl_example(gateway: RunningGateway) -> None:
    block = docs_example("bash", "curl -s").replace(DOCS_URL, gateway.url)
    body = json.loads(run_example(gateway, ["bash", "-c", block]))
    assert len(body["results"]) == 2 and body["results"][0]["index"] == 1  # top 2, the train passage first
    assert body["results"][0]["document"] == {"text": TRAIN} and body["results"][0]["relevance_score"] > 0.5


@pytest.mark.parametrize("marker", ["cohere.ClientV2(", "CohereRerank("])
def test_docs_python_examples(gateway: RunningGateway, marker: str) -> None:
    code = docs_example("python", marker).replace(DOCS_URL, gateway.url)
    lines = run_example(gateway, [sys.executable, "-c", code]).splitlines()
    assert len(lines) == 2  # top_n=2
    first = lines[0].split(" ", 1)
    assert first[0] == "1" if marker.startswith("cohere") else first[1] == TRAIN
