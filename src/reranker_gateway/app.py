"""The ASGI app: ``create_app(settings)`` serves the three rerank schemas over one ``AsyncRerankerClient``.

Endpoints (docs/gateway.md has the details): ``POST /v1/rerank`` (Cohere v1, Jina), ``POST
/v2/rerank`` (Cohere v2), ``POST /rerank`` (TEI), ``GET /health`` (a canary rerank through the whole
ensemble), ``GET /livez`` (the gateway's event loop answers), ``GET /info`` (the limits),
``GET /metrics`` (Prometheus) and ``GET /openapi.json``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from reranker_client import AsyncRerankerClient, RerankerError, RerankResult, RetryPolicy

from . import schemas
from .errors import GatewayError, from_client_error
from .limits import CannotHonourError, LimitsReader, ServerLimits
from .metrics import REASON_KEY, GatewayMetrics, MetricsMiddleware
from .settings import GatewaySettings

API_VERSION = "0.1.0"
V1, V2, TEI = "/v1/rerank", "/v2/rerank", "/rerank"
HEALTH, LIVEZ, INFO, METRICS, OPENAPI = "/health", "/livez", "/info", "/metrics", "/openapi.json"
DOCUMENTS_PER_SEARCH_UNIT = 100  # Cohere bills one search unit per query and started 100 documents

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorBody, "description": "Not JSON, or text the server cannot take"},
    401: {"model": schemas.ErrorBody, "description": "Missing or unknown API key (when keys are set)"},
    404: {"model": schemas.ErrorBody, "description": "Unknown model"},
    413: {"model": schemas.ErrorBody, "description": "Body or document list over the limit"},
    422: {"model": schemas.ErrorBody, "description": "The body breaks the schema; detail names the fields"},
    502: {"model": schemas.ErrorBody, "description": "Triton failed"},
    503: {"model": schemas.ErrorBody, "description": "Triton unavailable, overloaded or not ready; see Retry-After"},
    504: {"model": schemas.ErrorBody, "description": "The deadline passed"},
}
_TEI_ERRORS = {status: {**answer, "model": schemas.TEIErrorBody} for status, answer in _ERRORS.items()}
_TEI_ERROR_TYPES = {503: "Overloaded", 502: "Backend", 504: "Backend", 401: "Unauthorized", 404: "NotFound"}


# Module level: FastAPI resolves the dependency's annotations in this module's namespace.
BEARER = HTTPBearer(
    auto_error=False,
    description="API key as a bearer token; required only when the gateway is started with keys.",
)


class KeyRing:
    """Bearer tokens compared in constant time: every key is compared, as SHA-256 digests of equal length."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found


@dataclass
class Gateway:
    """What the handlers share: settings, the client, the server's limits, the metrics."""

    settings: GatewaySettings
    client: AsyncRerankerClient
    limits: LimitsReader
    metrics: GatewayMetrics

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.settings.model_name:
            raise GatewayError(
                404,
                f"model {model!r} is not served here; this gateway serves {self.settings.model_name!r}",
                "unknown_model",
            )

    def check_count(self, endpoint: str, count: int) -> None:
        if count > self.settings.max_documents:
            raise GatewayError(
                413,
                f"{count} documents is over this gateway's limit of {self.settings.max_documents} per request",
                "too_many_documents",
            )
        self.metrics.documents.labels(endpoint).observe(count)

    async def server_limits(self) -> ServerLimits:
        return await self.limits.get(timeout_s=self.settings.timeout_s)

    async def rerank(self, query: str, texts: list[str], *, top_n: int | None, raw: bool) -> list[RerankResult]:
        hits = await self.client.rerank(query, texts, top_n=top_n, normalize=not raw, timeout=self.settings.timeout_s)
        if not all(math.isfinite(hit.score) for hit in hits):
            raise GatewayError(502, "the server returned a score that is not a finite number", "upstream_error")
        return hits


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _text(document: schemas.DocumentInput) -> str:
    return document if isinstance(document, str) else document.text


def _document(document: schemas.DocumentInput) -> dict[str, Any]:
    return {"text": document} if isinstance(document, str) else document.model_dump()


def _envelope(gateway: Gateway, results: list[dict[str, Any]], count: int, version: str) -> dict[str, Any]:
    units = max(1, math.ceil(count / DOCUMENTS_PER_SEARCH_UNIT))
    return {
        "id": str(uuid.uuid4()),
        "model": gateway.settings.model_name,
        "results": results,
        "usage": {"documents": count, "search_units": units},
        "meta": {"api_version": {"version": version}, "billed_units": {"search_units": units}},
    }


def _cohere_results(
    hits: list[RerankResult], documents: Sequence[schemas.DocumentInput], return_documents: bool
) -> list[dict[str, Any]]:
    if return_documents:
        return [
            {"index": hit.index, "relevance_score": hit.score, "document": _document(documents[hit.index])}
            for hit in hits
        ]
    return [{"index": hit.index, "relevance_score": hit.score} for hit in hits]


async def _cohere_answer(
    gateway: Gateway, body: schemas.RerankRequest | schemas.RerankRequestV2, version: str
) -> JSONResponse:
    """The rerank and the response both Cohere versions share, once their own fields are checked."""
    texts = [_text(document) for document in body.documents]
    hits = await gateway.rerank(body.query, texts, top_n=body.top_n, raw=body.raw_scores)
    results = _cohere_results(hits, body.documents, body.return_documents)
    return JSONResponse(_envelope(gateway, results, len(texts), version))


def _error_json(path: str, status: int, message: str, headers: dict[str, str] | None, **extra: Any) -> JSONResponse:
    if path == TEI:
        error_type = "Validation" if status in (400, 413, 422) else _TEI_ERROR_TYPES.get(status, "Backend")
        return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)
    return JSONResponse({"message": message, **extra}, status_code=status, headers=headers)


def _error_response(request: Request, status: int, message: str, reason: str, **extra: Any) -> JSONResponse:
    setattr(request.state, REASON_KEY, reason)
    return _error_json(request.url.path, status, message, extra.pop("headers", None), **extra)


def _too_large(limit: int) -> str:
    return f"the body is over this gateway's limit of {limit} bytes"


class ContentLengthLimit:
    """413 in the API's error format for a declared ``Content-Length`` over the limit, before any reading.

    Bodies without a length (chunked) are counted as they arrive by Starlette's
    ``RequestBodyLimitMiddleware``, whose 413 goes through the app's exception handler.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.limit:
                scope.setdefault("state", {})[REASON_KEY] = "too_large"
                response = _error_json(scope.get("path", ""), 413, _too_large(self.limit), None)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _field(loc: Sequence[Any]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway app for ``settings``; its client connects when the app starts (lifespan)."""
    metrics = GatewayMetrics()
    keys = KeyRing(settings.api_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = AsyncRerankerClient(
            settings.triton_url,
            model=settings.triton_model,
            timeout=settings.timeout_s,
            retries=RetryPolicy(max_attempts=settings.max_attempts),
        )
        app.state.gateway = Gateway(settings, client, LimitsReader(settings.triton_url), metrics)
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(
        title="triton-reranker gateway",
        version=API_VERSION,
        summary="Rerank API compatible with Cohere (v1, v2), Jina and TEI, in front of Triton",
        description="Scores are sigmoid(logit) unless raw scores are asked for; results come best first, "
        "ties broken by the lower index. See docs/gateway.md.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )

    async def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        if keys and (credentials is None or not keys.accepts(credentials.credentials)):
            raise GatewayError(
                401,
                "a valid API key is required: Authorization: Bearer <key>",
                "unauthorized",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(request, exc.status, exc.message, exc.reason, headers=exc.headers or None)

    @app.exception_handler(RerankerError)
    async def client_error(request: Request, exc: RerankerError) -> JSONResponse:
        error = from_client_error(exc, retry_after_s=settings.retry_after_s)
        return _error_response(request, error.status, error.message, error.reason, headers=error.headers or None)

    @app.exception_handler(CannotHonourError)
    async def cannot_honour(request: Request, exc: CannotHonourError) -> JSONResponse:
        return _error_response(request, 422, str(exc), "cannot_honour")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors
        ]
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "invalid JSON")
            return _error_response(request, 400, f"the body is not valid JSON: {reason}", "invalid_json")
        where = _field(first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return _error_response(request, 422, message, "validation", detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http")
        message = str(exc.detail)
        if exc.status_code == 413:
            message = _too_large(settings.max_body_bytes)
        return _error_response(request, exc.status_code, message, reason, headers=exc.headers)

    @app.post(
        V1,
        response_model=schemas.RerankResponse,
        responses=_ERRORS,
        tags=["rerank"],
        dependencies=[Security(authorize)],
    )
    async def rerank_v1(body: schemas.RerankRequest, request: Request) -> JSONResponse:
        """Cohere v1 and Jina rerank: documents as strings or `{"text": ...}` objects."""
        gateway = _gateway(request)
        gateway.check_model(body.model)
        gateway.check_count(V1, len(body.documents))
        if body.rank_fields is not None and body.rank_fields != ["text"]:
            raise GatewayError(422, 'rank_fields: only ["text"] is supported', "validation")
        if body.max_chunks_per_doc is not None:
            (await gateway.server_limits()).check_max_chunks_per_doc(body.max_chunks_per_doc)
        return await _cohere_answer(gateway, body, "1")

    @app.post(
        V2,
        response_model=schemas.RerankResponse,
        responses=_ERRORS,
        tags=["rerank"],
        dependencies=[Security(authorize)],
    )
    async def rerank_v2(body: schemas.RerankRequestV2, request: Request) -> JSONResponse:
        """Cohere v2 rerank: `max_tokens_per_doc` is honoured or rejected with 422, never ignored."""
        gateway = _gateway(request)
        gateway.check_model(body.model)
        gateway.check_count(V2, len(body.documents))
        if body.max_tokens_per_doc is not None:
            (await gateway.server_limits()).check_max_tokens_per_doc(body.max_tokens_per_doc)
        return await _cohere_answer(gateway, body, "2")

    @app.post(
        TEI,
        response_model=list[schemas.TEIRank],
        responses=_TEI_ERRORS,
        tags=["rerank"],
        dependencies=[Security(authorize)],
    )
    async def rerank_tei(body: schemas.TEIRerankRequest, request: Request) -> JSONResponse:
        """Hugging Face TEI rerank: a bare array, best first; no 32-document limit."""
        gateway = _gateway(request)
        gateway.check_count(TEI, len(body.texts))
        hits = await gateway.rerank(body.query, body.texts, top_n=None, raw=body.raw_scores)
        if body.return_text:
            ranks = [{"index": hit.index, "score": hit.score, "text": body.texts[hit.index]} for hit in hits]
        else:
            ranks = [{"index": hit.index, "score": hit.score} for hit in hits]
        return JSONResponse(ranks)

    @app.get(HEALTH, response_model=schemas.Health, responses={503: {"model": schemas.Health}}, tags=["operations"])
    async def health(request: Request) -> JSONResponse:
        """Deep health: one canary rerank through every step of the ensemble."""
        canary = await _gateway(request).client.canary(timeout=settings.health_timeout_s)
        body = {"status": "ok" if canary.healthy else "unhealthy", "canary_ms": round(canary.seconds * 1000, 3)}
        if canary.healthy:
            return JSONResponse(body)
        setattr(request.state, REASON_KEY, "unhealthy")
        headers = {"Retry-After": str(settings.retry_after_s)}
        return JSONResponse({**body, "error": canary.error}, status_code=503, headers=headers)

    @app.get(LIVEZ, tags=["operations"])
    async def livez() -> dict[str, str]:
        """The gateway's event loop answers (Triton is not asked: that is /health)."""
        return {"status": "ok"}

    @app.get(INFO, response_model=schemas.ServerInfo, responses={503: _ERRORS[503]}, tags=["operations"])
    async def info(request: Request) -> JSONResponse:
        """The served model and the limits of this gateway and of its server."""
        limits = await _gateway(request).server_limits()
        return JSONResponse(
            {
                "model": settings.model_name,
                "max_documents_per_request": settings.max_documents,
                "max_body_bytes": settings.max_body_bytes,
                "triton_max_documents": limits.max_documents,
                "max_length": limits.max_length,
                "overflow": limits.overflow.value if limits.overflow is not None else None,
            }
        )

    @app.get(METRICS, response_class=Response, tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus metrics: requests, latency, documents per request, errors by status and reason."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    paths = {V1, V2, TEI, HEALTH, LIVEZ, INFO, METRICS, OPENAPI}
    # Starlette's limit counts chunked bodies as they arrive; a declared Content-Length over the
    # limit is answered before it (Starlette would answer that one in plain text, not the API's JSON).
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_body_bytes)
    app.add_middleware(ContentLengthLimit, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)  # outermost: counts the 413s too
    return app
