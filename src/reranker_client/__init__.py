"""Typed gRPC client for the reranker ensemble on Triton (sync and asyncio), with top-n selection.

>>> from reranker_client import RerankerClient
>>> with RerankerClient("localhost:8001") as client:  # doctest: +SKIP
...     for hit in client.rerank("what is a panda?", passages, top_n=5, normalize=True):
...         print(hit.index, hit.score)

Installs with ``pip install "triton-reranker[client]"``: tritonclient[grpc], grpcio, numpy; nothing heavy.
The exception tree is documented in :mod:`reranker_client.errors`.
"""

from ._core import CanaryResult
from .async_client import AsyncRerankerClient
from .config import AdaptiveThrottle, Compression, LoadBalancing, RetryBudget, RetryPolicy, TLSConfig
from .errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelNotReadyError,
    OverloadedError,
    RerankerError,
    ServerError,
    ServerUnavailableError,
)
from .ranking import RerankResult, sigmoid, top_n_indices
from .sync_client import RerankerClient

__all__ = [
    "AdaptiveThrottle",
    "AsyncRerankerClient",
    "CanaryResult",
    "Compression",
    "DeadlineExceededError",
    "InvalidInputError",
    "LoadBalancing",
    "ModelNotReadyError",
    "OverloadedError",
    "RerankResult",
    "RerankerClient",
    "RerankerError",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailableError",
    "TLSConfig",
    "sigmoid",
    "top_n_indices",
]
