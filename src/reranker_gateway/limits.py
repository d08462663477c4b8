"""What the server does with long documents, read once from the tokenizer step's config.

The gateway has no tokenizer, so it can honour ``max_tokens_per_doc`` (Cohere v2) and
``max_chunks_per_doc`` (Cohere v1) only where the server's own truncation already implies them.
The parameter names are the ones ``reranker_export`` renders (tests/test_gateway.py keeps them equal).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum

import grpc
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from reranker_client.config import MAX_DOCUMENTS_PARAMETER, TOKENIZER_MODEL_NAME
from reranker_client.errors import ServerError, translate

MAX_LENGTH_PARAMETER = "max_length"
OVERFLOW_PARAMETER = "overflow"
# Tokens a (query, document) pair spends on special tokens: <s> q </s></s> p </s>.
PAIR_SPECIAL_TOKENS = 4


class CannotHonourError(ValueError):
    """A request option the server's settings cannot honour (the gateway answers 422)."""


class Overflow(str, Enum):
    TRUNCATE = "truncate"
    WINDOW = "window"


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    max_length: int | None
    """Tokens per pair, special tokens included; ``None``: the config does not say."""
    overflow: Overflow | None
    max_documents: int | None

    @property
    def max_document_tokens(self) -> int | None:
        """The most tokens of one document a truncating server scores (an empty query leaves this many)."""
        if self.overflow is not Overflow.TRUNCATE or self.max_length is None:
            return None
        return self.max_length - PAIR_SPECIAL_TOKENS

    def check_max_tokens_per_doc(self, value: int | None) -> None:
        """Accept ``value`` when the server never scores more tokens of a document; else ``CannotHonourError``."""
        if value is None:
            return
        keeps = self.max_document_tokens
        if keeps is None:
            raise CannotHonourError(
                f"max_tokens_per_doc={value} cannot be honoured: this server scores whole long documents "
                "(window mode) and the gateway has no tokenizer to cut them; omit max_tokens_per_doc"
            )
        if value < keeps:
            raise CannotHonourError(
                f"max_tokens_per_doc={value} cannot be honoured: this server keeps up to {keeps} tokens of each "
                f"document (pairs truncated to {self.max_length} tokens) and the gateway has no tokenizer to cut "
                f"further; send at least {keeps} or omit it"
            )

    def check_max_chunks_per_doc(self, value: int | None) -> None:
        """A truncating server scores one chunk per document, which any ``value >= 1`` allows."""
        if value is not None and self.overflow is not Overflow.TRUNCATE:
            raise CannotHonourError(
                f"max_chunks_per_doc={value} cannot be honoured: this server splits long documents into as many "
                "windows as they need (window mode); omit max_chunks_per_doc"
            )


def parse_limits(config: model_config_pb2.ModelConfig) -> ServerLimits:
    def text(name: str) -> str | None:
        parameter = config.parameters.get(name)
        return parameter.string_value if parameter is not None and parameter.string_value else None

    def integer(name: str) -> int | None:
        value = text(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError as exc:
            raise ServerError(f"model {config.name!r} has a non-integer {name!r}: {value!r}") from exc

    overflow = text(OVERFLOW_PARAMETER)
    try:
        mode = Overflow(overflow) if overflow is not None else None
    except ValueError as exc:
        raise ServerError(f"model {config.name!r} has an unknown {OVERFLOW_PARAMETER!r}: {overflow!r}") from exc
    return ServerLimits(
        max_length=integer(MAX_LENGTH_PARAMETER), overflow=mode, max_documents=integer(MAX_DOCUMENTS_PARAMETER)
    )


class LimitsReader:
    """Reads the tokenizer's config on first use and keeps it; failures are retried on the next use."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._limits: ServerLimits | None = None
        self._lock = asyncio.Lock()

    async def get(self, *, timeout_s: float) -> ServerLimits:
        if self._limits is not None:
            return self._limits
        async with self._lock:
            if self._limits is None:
                self._limits = await self._read(timeout_s)
            return self._limits

    async def _read(self, timeout_s: float) -> ServerLimits:
        triton = aioclient.InferenceServerClient(self._url)
        try:
            response = await triton.get_model_config(TOKENIZER_MODEL_NAME, client_timeout=timeout_s)
        except (InferenceServerException, grpc.RpcError) as exc:
            raise translate(exc, context=f"get_model_config {TOKENIZER_MODEL_NAME!r} at {self._url}") from exc
        finally:
            await triton.close()
        return parse_limits(response.config)
