"""reranker_client: pure ranking helpers, then the sync and asyncio clients against a real Triton."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException

import reranker_client
from reranker_client import (
    AsyncRerankerClient,
    Compression,
    DeadlineExceededError,
    InvalidInputError,
    LoadBalancing,
    ModelNotReadyError,
    RerankerClient,
    RerankerError,
    RerankResult,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    TLSConfig,
    cli,
    config,
    sigmoid,
    top_n_indices,
)
from reranker_client.errors import status_code, translate
from reranker_client.ranking import chunk_slices, rank

# --------------------------------------------------------------------------------------------
# Pure helpers: no server
# --------------------------------------------------------------------------------------------


def reference_order(scores: np.ndarray) -> np.ndarray:
    """Full sort: score descending, ties by ascending input index."""
    return np.lexsort((np.arange(scores.shape[0]), -scores))


@pytest.mark.parametrize("size", [1, 2, 7, 50, 333])
def test_top_n_equals_full_sort_with_ties(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(20):
        # Few distinct values: ties everywhere, including at the top-n boundary.
        scores = rng.integers(-3, 4, size=size).astype(np.float32)
        reference = reference_order(scores)
        for n in {0, 1, 2, 3, 5, size // 2, size - 1, size, size + 4}:
            np.testing.assert_array_equal(top_n_indices(scores, n), reference[:n])
        np.testing.assert_array_equal(top_n_indices(scores), reference)


def test_top_n_boundary_ties_pick_lowest_indices() -> None:
    scores = np.array([1.0, 5.0, 1.0, 1.0, 5.0, 1.0], dtype=np.float32)
    assert top_n_indices(scores, 3).tolist() == [1, 4, 0]
    assert top_n_indices(scores, 4).tolist() == [1, 4, 0, 2]


def test_top_n_nan_ranks_last() -> None:
    scores = np.array([np.nan, 0.5, -1.0, np.nan, 2.0])
    assert top_n_indices(scores).tolist() == [4, 1, 2, 0, 3]
    assert top_n_indices(scores, 3).tolist() == [4, 1, 2]


def test_top_n_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_n"):
        top_n_indices(np.zeros(3), -1)
    with pytest.raises(ValueError, match="one-dimensional"):
        top_n_indices(np.zeros((2, 2)), 1)


def test_rank_builds_results() -> None:
    results = rank(np.array([0.1, 0.9, 0.5], dtype=np.float32), ["a", "b", "c"], top_n=2)
    assert results == [
        RerankResult(index=1, score=pytest.approx(0.9), document="b"),
        RerankResult(index=2, score=pytest.approx(0.5), document="c"),
    ]
    assert all(isinstance(r.score, float) and isinstance(r.index, int) for r in results)
    assert rank(np.array([0.1, 0.9]), None)[0].document is None


def test_sigmoid_matches_flagreranker_and_never_overflows() -> None:
    logits = np.linspace(-30, 30, 121, dtype=np.float32)
    flag_reranker = np.array([1 / (1 + np.exp(-float(x))) for x in logits])  # FlagReranker's formula
    np.testing.assert_allclose(sigmoid(logits), flag_reranker, rtol=1e-12, atol=0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        extreme = sigmoid(np.array([-1e4, -800.0, 0.0, 800.0, 1e4], dtype=np.float64))
    assert extreme[0] == 0.0 and extreme[2] == 0.5 and extreme[-1] == 1.0
    # float64 keeps large logits apart, so normalized ranking keeps the logits' order.
    assert sigmoid(np.array([18.0]))[0] < sigmoid(np.array([19.0]))[0]


@pytest.mark.parametrize(
    ("count", "limit"),
    [(0, 16), (1, 16), (16, 16), (17, 16), (50, 16), (64, 64), (65, 64), (200, 7), (10, None), (5, 1)],
)
def test_chunk_slices_cover_in_order_and_balance(count: int, limit: int | None) -> None:
    slices = chunk_slices(count, limit)
    covered = [i for s in slices for i in range(s.start, s.stop)]
    assert covered == list(range(count))
    sizes = [s.stop - s.start for s in slices]
    if limit is not None:
        assert max(sizes) <= limit
        assert len(slices) == max(1, -(-count // limit))
    assert max(sizes) - min(sizes) <= 1


def test_chunk_slices_example() -> None:
    assert [(s.start, s.stop) for s in chunk_slices(50, 16)] == [(0, 13), (13, 26), (26, 38), (38, 50)]


def test_retry_policy_backoff_grows_caps_and_jitters() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0, jitter=0.2)
    rng = __import__("random").Random(0)
    for retry, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        delays = [policy.backoff_s(retry, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > 0.1 * base  # jittered, not constant
    assert RetryPolicy(jitter=0.0).backoff_s(1) == RetryPolicy().initial_backoff_s
    assert not RetryPolicy.disabled().allows(1)
    assert RetryPolicy(max_attempts=3).allows(2) and not RetryPolicy(max_attempts=3).allows(3)
    for bad in (
        {"max_attempts": 0},
        {"initial_backoff_s": 0},
        {"initial_backoff_s": 2.0},
        {"multiplier": 0.5},
        {"jitter": 1.0},
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    with pytest.raises(ValueError, match="both"):
        TLSConfig(private_key="key.pem")


def test_channel_args_keep_tritonclient_defaults() -> None:
    """tritonclient drops its message-size and keepalive defaults once channel_args is given."""
    keepalive = KeepAliveOptions()
    args = dict(config.channel_args(load_balancing=LoadBalancing.ROUND_ROBIN, retries=RetryPolicy()))
    assert args["grpc.max_send_message_length"] == MAX_GRPC_MESSAGE_SIZE
    assert args["grpc.max_receive_message_length"] == MAX_GRPC_MESSAGE_SIZE
    assert args["grpc.keepalive_time_ms"] == keepalive.keepalive_time_ms
    assert args["grpc.keepalive_timeout_ms"] == keepalive.keepalive_timeout_ms
    assert args["grpc.keepalive_permit_without_calls"] == keepalive.keepalive_permit_without_calls
    assert args["grpc.http2.max_pings_without_data"] == keepalive.http2_max_pings_without_data
    assert args["grpc.lb_policy_name"] == "round_robin"
    overridden = dict(
        config.channel_args(
            load_balancing=LoadBalancing.PICK_FIRST,
            retries=RetryPolicy(),
            tls=TLSConfig(server_name_override="reranker.internal"),
            extra=[("grpc.keepalive_time_ms", 30_000)],
        )
    )
    assert overridden["grpc.keepalive_time_ms"] == 30_000
    assert overridden["grpc.lb_policy_name"] == "pick_first"
    assert overridden["grpc.ssl_target_name_override"] == "reranker.internal"


def test_contract_names_match_export_settings() -> None:
    from reranker_export import settings

    assert config.ENSEMBLE_NAME == settings.ENSEMBLE_NAME
    assert config.TOKENIZER_MODEL_NAME == settings.TOKENIZER_MODEL_NAME
    assert (config.QUERY, config.DOCUMENTS, config.SCORES) == (
        settings.QUERY,
        settings.DOCUMENTS,
        settings.SCORES,
    )


EXPECTED_CLASS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: ModelNotReadyError,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_code_maps_to_one_class(code: grpc.StatusCode) -> None:
    expected = EXPECTED_CLASS.get(code, ServerError)
    # What tritonclient raises (status as the enum's str) and what grpc.aio raises (the enum).
    triton_error = InferenceServerException(msg="details here", status=str(code), debug_details="debug")
    aio_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="details here")
    for original in (triton_error, aio_error):
        assert status_code(original) is code
        mapped = translate(original, context="infer")
        assert type(mapped) is expected
        assert mapped.code is code
        assert "details here" in str(mapped) and code.name in str(mapped)


def test_failures_without_status_map_to_fallback() -> None:
    mapped = translate(InferenceServerException(msg="input_tensor must be a numpy array"))
    assert type(mapped) is ServerError and mapped.code is None
    assert issubclass(ServerError, RerankerError)
    for cls in (InvalidInputError, ServerUnavailableError, DeadlineExceededError, ModelNotReadyError):
        assert issubclass(cls, RerankerError)


def dead_url() -> str:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    ("query", "documents", "message"),
    [
        ("q", ["a", 3], r"documents\[1\] must be a str, got int"),
        ("q", ["a", b"bytes"], r"documents\[1\] must be a str, got bytes"),
        ("q", [None], r"documents\[0\] must be a str, got NoneType"),
        ("q", "not a list", "iterable of str, got str"),
        (b"q", ["a"], "query must be a str, got bytes"),
    ],
)
def test_non_string_input_fails_before_any_request(query: Any, documents: Any, message: str) -> None:
    # A dead server: had the client tried to send, it would raise ServerUnavailableError instead.
    with RerankerClient(dead_url(), timeout=5, retries=RetryPolicy.disabled()) as client:
        with pytest.raises(TypeError, match=message):
            client.rerank(query, documents)
        with pytest.raises(TypeError, match=message):
            client.score(query, documents)

    async def run() -> None:
        async with AsyncRerankerClient(dead_url(), timeout=5, retries=RetryPolicy.disabled()) as client:
            with pytest.raises(TypeError, match=message):
                await client.rerank(query, documents)

    asyncio.run(run())


def test_invalid_unicode_and_top_n_fail_before_any_request() -> None:
    with RerankerClient(dead_url(), timeout=5, max_documents=8) as client:
        with pytest.raises(InvalidInputError, match="not valid Unicode"):
            client.score("q", ["lone surrogate \ud800"])
        with pytest.raises(ValueError, match="top_n"):
            client.rerank("q", ["a"], top_n=-1)
        assert client.rerank("q", []) == []
        assert client.score("q", []).shape == (0,)
    with pytest.raises(RuntimeError, match="closed"):
        client.score("q", ["a"])


def test_public_api_is_exported() -> None:
    for name in reranker_client.__all__:
        assert hasattr(reranker_client, name), name


# --------------------------------------------------------------------------------------------
# Against a real Triton (fixtures from conftest.py)
# --------------------------------------------------------------------------------------------

QUERY = "Which team won the football match on Sunday?"


@pytest.fixture(scope="module")
def passages() -> list[str]:
    from reranker_export.testmodels import corpus

    texts = [entry.text for entry in corpus() if entry.kind == "passage"]
    assert len(texts) >= 64
    return texts


def direct_scores(url: str, query: str, documents: list[str]) -> np.ndarray:
    """The ensemble called with plain tritonclient, no reranker_client code involved."""
    client = grpcclient.InferenceServerClient(url)
    try:
        q = grpcclient.InferInput("query", [1], "BYTES")
        q.set_data_from_numpy(np.array([query.encode()], dtype=np.object_))
        d = grpcclient.InferInput("documents", [len(documents)], "BYTES")
        d.set_data_from_numpy(np.array([t.encode() for t in documents], dtype=np.object_))
        return client.infer("reranker", [q, d]).as_numpy("scores")
    finally:
        client.close()


@pytest.fixture(scope="module")
def limit16_server(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Same model, but the server accepts at most 16 documents per request."""
    from reranker_serve import TritonServer
    from support import rerender_cpu_repository

    repository = rerender_cpu_repository(cpu_repository, tmp_path_factory.mktemp("repos") / "limit16", max_documents=16)
    with TritonServer(repository, log_file=tmp_path_factory.mktemp("logs") / "limit16.log") as server:
        yield server


def test_scores_equal_direct_ensemble_call(triton_server: Any, passages: list[str]) -> None:
    documents = passages[:40]
    expected = direct_scores(triton_server.grpc_url, QUERY, documents)
    with RerankerClient(triton_server.grpc_url) as client:
        scores = client.score(QUERY, documents)
        assert scores.dtype == np.float32
        np.testing.assert_array_equal(scores, expected)
        np.testing.assert_allclose(client.score(QUERY, documents, normalize=True), sigmoid(expected))
        results = client.rerank(QUERY, documents, top_n=5, return_documents=True)
    assert [r.index for r in results] == reference_order(expected)[:5].tolist()
    assert [r.score for r in results] == [float(expected[r.index]) for r in results]
    assert [r.document for r in results] == [documents[r.index] for r in results]


def test_rerank_top_n_equals_full_sort_with_ties(triton_server: Any, passages: list[str]) -> None:
    # Repeated documents score identically: real ties, broken by input index.
    documents = [passages[i % 7] for i in range(30)]
    with RerankerClient(triton_server.grpc_url) as client:
        scores = client.score(QUERY, documents)
        assert len(set(scores.tolist())) <= 7
        for normalize in (False, True):
            values = sigmoid(scores) if normalize else scores
            reference = reference_order(values)
            for top_n in (None, 1, 3, 5, 8, 29, 30, 100):
                results = client.rerank(QUERY, documents, top_n=top_n, normalize=normalize)
                expected = reference if top_n is None else reference[:top_n]
                assert [r.index for r in results] == expected.tolist()
                assert [r.score for r in results] == pytest.approx(values[expected].tolist())


def test_server_limit_is_read_and_long_lists_are_split(
    triton_server: Any, limit16_server: Any, passages: list[str]
) -> None:
    documents = passages[:50]
    with RerankerClient(triton_server.grpc_url) as large:
        assert large.max_documents() == 64
        one_request = large.score(QUERY, documents)
        one_request_ranked = large.rerank(QUERY, documents, top_n=10)
    with RerankerClient(limit16_server.grpc_url) as small:
        assert small.max_documents() == 16
        split = small.score(QUERY, documents)
        split_ranked = small.rerank(QUERY, documents, top_n=10)
    # Different padding per request may move the last float bits, not the ranking.
    np.testing.assert_allclose(split, one_request, rtol=1e-5, atol=1e-5)
    assert [r.index for r in split_ranked] == [r.index for r in one_request_ranked]

    # Without splitting, that server rejects the list: INVALID_ARGUMENT, and it keeps serving.
    with RerankerClient(limit16_server.grpc_url, max_documents=64) as unsplit:
        with pytest.raises(InvalidInputError) as raised:
            unsplit.score(QUERY, documents)
        assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(raised.value.__cause__, InferenceServerException)
        assert raised.value.__cause__.status() == "StatusCode.INVALID_ARGUMENT"
        np.testing.assert_allclose(unsplit.score(QUERY, documents[:16]), one_request[:16], rtol=1e-5, atol=1e-5)

    async def split_async() -> np.ndarray:
        async with AsyncRerankerClient(limit16_server.grpc_url) as client:
            assert await client.max_documents() == 16
            return await client.score(QUERY, documents)

    np.testing.assert_allclose(asyncio.run(split_async()), one_request, rtol=1e-5, atol=1e-5)


def test_not_found_maps_to_model_not_ready(triton_server: Any) -> None:
    with RerankerClient(triton_server.grpc_url, model="no_such_model") as client:
        with pytest.raises(ModelNotReadyError) as raised:
            client.score(QUERY, ["a document"])
        assert raised.value.code is grpc.StatusCode.NOT_FOUND
        assert isinstance(raised.value.__cause__, InferenceServerException)
        assert client.is_live() is True
        assert client.is_ready() is False
        with pytest.raises(ModelNotReadyError):
            # Generous: the server must answer "not found" before this passes, even on busy cores.
            client.wait_until_ready(timeout=2.0)
    with (
        RerankerClient(triton_server.grpc_url, limits_model="no_such_model") as client,
        pytest.raises(ModelNotReadyError, match="get_model_config"),
    ):
        client.max_documents()


def test_hung_server_maps_to_deadline_exceeded() -> None:
    # Accepts TCP connections and never speaks gRPC: every call runs into its deadline.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"127.0.0.1:{hung.getsockname()[1]}"
        with RerankerClient(url, timeout=0.5, max_documents=16) as client:
            with pytest.raises(DeadlineExceededError) as raised:
                client.score(QUERY, ["a document"])
            assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
            assert client.is_live(timeout=0.3) is False

        async def run() -> None:
            async with AsyncRerankerClient(url, timeout=0.5, max_documents=16) as client:
                with pytest.raises(DeadlineExceededError):
                    await client.rerank(QUERY, ["a document"])

        asyncio.run(run())


def test_other_status_maps_to_fallback() -> None:
    # A real gRPC server without Triton's service: UNIMPLEMENTED for every method.
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RerankerClient(f"127.0.0.1:{port}", timeout=5) as client:
            with pytest.raises(ServerError) as raised:
                client.score(QUERY, ["a document"])
            assert raised.value.code is grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(ServerError):
                client.is_live()
    finally:
        server.stop(None)


def test_dead_server_fails_unavailable_within_deadline(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reranker_client")
    timeout = 3.0
    with RerankerClient(dead_url(), timeout=timeout, max_documents=16) as client:
        assert client.is_live() is False and client.is_ready() is False
        with pytest.raises(ServerUnavailableError) as raised:
            client.score(QUERY, ["a document"])
        with pytest.raises(ServerUnavailableError):
            client.wait_until_ready(timeout=0.5)
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert isinstance(raised.value.__cause__, InferenceServerException)
    # It retried, on a schedule that fits the deadline, then gave up saying so.
    delays = [float(m.group(1)) for r in caplog.records if (m := re.search(r"retrying in ([\d.]+) s", r.getMessage()))]
    assert len(delays) >= 2 and sum(delays) < timeout
    assert re.search(r"gave up after \d+ attempt", str(raised.value))
    with (
        RerankerClient(dead_url(), timeout=timeout, max_documents=16, retries=RetryPolicy.disabled()) as client,
        pytest.raises(ServerUnavailableError, match=r"after 1 attempt"),
    ):
        client.score(QUERY, ["a document"])


def test_server_restart_is_recovered_within_deadline(
    cpu_repository: Path, passages: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reranker_serve import TritonServer, free_port

    caplog.set_level(logging.INFO, logger="reranker_client")
    documents = passages[:20]
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    first = TritonServer(cpu_repository, log_file=tmp_path / "first.log", **ports).start()
    # Same repository, same ports: what a restarted pod behind a stable address looks like.
    second = TritonServer(cpu_repository, log_file=tmp_path / "second.log", **ports)
    retried = threading.Event()

    class RetryWatcher(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage():
                retried.set()

    watcher = RetryWatcher()
    logger = logging.getLogger("reranker_client")
    logger.addHandler(watcher)
    try:
        with RerankerClient(first.grpc_url, timeout=180) as client, ThreadPoolExecutor(1) as pool:
            before = [client.score(QUERY, documents) for _ in range(3)]
            first.stop()
            with pytest.raises(ServerUnavailableError):
                client.score(QUERY, documents, timeout=1.0)
            retried.clear()
            during = pool.submit(client.score, QUERY, documents)
            # The call is under way and retrying while no server listens...
            assert retried.wait(timeout=60)
            assert not during.done()
            second.start()  # ...then a server comes back on the same port, within the deadline.
            recovered = during.result(timeout=180)
            after = [client.score(QUERY, documents) for _ in range(3)]
    finally:
        logger.removeHandler(watcher)
        first.stop()
        second.stop()
    for scores in [*before[1:], recovered, *after]:
        np.testing.assert_allclose(scores, before[0], rtol=1e-6, atol=1e-6)


def test_async_client_concurrent_callers_get_their_own_results(triton_server: Any, passages: list[str]) -> None:
    # Each caller has its own query and its own documents (and count): a mix-up cannot go unseen.
    callers = [(f"{QUERY} ({i})", passages[i % 37 : i % 37 + 5 + i % 11]) for i in range(64)]
    with RerankerClient(triton_server.grpc_url) as client:
        expected = [client.score(query, documents) for query, documents in callers]

    async def run() -> tuple[list[np.ndarray], list[list[RerankResult]]]:
        async with AsyncRerankerClient(triton_server.grpc_url) as client:
            scores = await asyncio.gather(*(client.score(q, d) for q, d in callers))
            ranked = await asyncio.gather(*(client.rerank(q, d, top_n=3, return_documents=True) for q, d in callers))
            assert await client.is_live() and await client.is_ready()
            await client.wait_until_ready(timeout=5)
            return list(scores), list(ranked)

    scores, ranked = asyncio.run(run())
    for (_, documents), want, got, hits in zip(callers, expected, scores, ranked, strict=True):
        assert got.shape == want.shape
        # Dynamic batching may group callers differently: last-bit differences at most.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert [h.index for h in hits] == reference_order(want)[:3].tolist()
        assert [h.document for h in hits] == [documents[h.index] for h in hits]


def test_async_errors_map_like_sync(triton_server: Any) -> None:
    async def run() -> None:
        async with AsyncRerankerClient(dead_url(), timeout=1.0, max_documents=16) as dead:
            assert await dead.is_live() is False
            with pytest.raises(ServerUnavailableError):
                await dead.score(QUERY, ["a"])
        async with AsyncRerankerClient(triton_server.grpc_url, max_documents=200) as client:
            with pytest.raises(InvalidInputError):
                await client.score(QUERY, ["a"] * 100)
        async with AsyncRerankerClient(triton_server.grpc_url, model="no_such_model") as client:
            with pytest.raises(ModelNotReadyError):
                await client.score(QUERY, ["a"])

    asyncio.run(run())


def test_health_helpers(triton_server: Any) -> None:
    with RerankerClient(triton_server.grpc_url) as client:
        assert client.is_live() and client.is_ready()
        client.wait_until_ready(timeout=5)


def test_compression_and_dns_target(triton_server: Any, passages: list[str]) -> None:
    documents = passages[:10]
    expected = direct_scores(triton_server.grpc_url, QUERY, documents)
    port = triton_server.grpc_port
    for url, compression in [
        (f"dns:///127.0.0.1:{port}", Compression.NONE),
        (triton_server.grpc_url, Compression.GZIP),
        (triton_server.grpc_url, Compression.DEFLATE),
    ]:
        with RerankerClient(url, compression=compression) as client:
            np.testing.assert_allclose(client.score(QUERY, documents), expected, rtol=1e-6, atol=1e-6)


def success_count(url: str) -> int:
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("reranker")
        return sum(m.inference_stats.success.count for m in stats.model_stats)
    finally:
        client.close()


def test_round_robin_spreads_requests_over_replicas(
    triton_server: Any, limit16_server: Any, passages: list[str]
) -> None:
    # Two replicas behind one target (what dns:/// gives for a headless Service).
    replicas = [triton_server, limit16_server]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.grpc_port}" for s in replicas)
    for policy, spread in [(LoadBalancing.ROUND_ROBIN, True), (LoadBalancing.PICK_FIRST, False)]:
        with RerankerClient(target, load_balancing=policy) as client:
            client.wait_until_ready(timeout=30)
            before = [success_count(s.grpc_url) for s in replicas]
            for _ in range(10):
                client.score(QUERY, passages[:4])
        # Triton updates its statistics just after answering: poll until all ten are counted.
        deadline = time.monotonic() + 30
        while True:
            served = [success_count(s.grpc_url) - b for s, b in zip(replicas, before, strict=True)]
            if sum(served) >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # poll interval
        assert sum(served) == 10
        assert (min(served) > 0) is spread, (policy, served)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def test_cli_rank_table_and_json(
    triton_server: Any, passages: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = passages[:12]
    expected = reference_order(direct_scores(triton_server.grpc_url, QUERY, documents))[:3].tolist()
    lines_file = tmp_path / "docs.txt"
    lines_file.write_text("\n".join(documents) + "\n\n", encoding="utf-8")
    json_file = tmp_path / "docs.json"
    json_file.write_text(json.dumps(documents), encoding="utf-8")

    url = triton_server.grpc_url
    assert cli.main(["rank", "--url", url, "--query", QUERY, "--documents-file", str(lines_file), "--top-n", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "index", "score", "document"]
    assert [int(line.split()[1]) for line in table[2:]] == expected

    assert (
        cli.main(
            [
                "rank",
                "--url",
                url,
                "--query",
                QUERY,
                "--documents-file",
                str(json_file),
                "--top-n",
                "3",
                "--normalize",
                "--json",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert [item["index"] for item in payload] == expected
    assert all(0 < item["score"] < 1 for item in payload)
    assert [item["document"] for item in payload] == [documents[i] for i in expected]

    assert cli.main(["rank", "--url", url, "--query", QUERY, *documents[:2], "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2

    assert cli.main(["health", "--url", url]) == 0
    assert "ready (reranker): yes" in capsys.readouterr().out


def test_cli_failures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = dead_url()
    assert cli.main(["rank", "--url", url, "--query", "q", "--documents-file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read documents file" in err

    bad_json = tmp_path / "docs.json"
    bad_json.write_text('{"not": "a list"}', encoding="utf-8")
    assert cli.main(["rank", "--url", url, "--query", "q", "--documents-file", str(bad_json)]) == 2
    assert "JSON array of strings" in capsys.readouterr().err

    assert cli.main(["rank", "--url", url, "--timeout", "1", "--query", "q", "a document"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ServerUnavailableError" in err and "Traceback" not in err

    assert cli.main(["health", "--url", url, "--timeout", "1"]) == 1
    assert "live: no" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exited:
        cli.main(["rank", "--url", url, "--query", "q"])  # no documents at all
    assert exited.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    assert "rank" in capsys.readouterr().out
