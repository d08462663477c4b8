"""Prometheus metrics of one gateway app (its own registry, so apps in one process stay apart).

Labels are bounded: ``endpoint`` is a route path of the app (or ``other``), ``status`` the HTTP
status, ``reason`` a short fixed word (``validation``, ``too_large``, ``unauthorized``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "reranker_gateway"
REASON_KEY = "error_reason"
"""Where a handler leaves the error reason: ``request.state`` (the scope's ``state`` dict)."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
DOCUMENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests answered", ("endpoint", "status"), registry=self.registry
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "HTTP requests answered with an error",
            ("endpoint", "status", "reason"),
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from the request's arrival to the end of its answer",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.documents = Histogram(
            f"{PREFIX}_documents_per_request",
            "Documents in each rerank request that passed validation",
            ("endpoint",),
            buckets=DOCUMENT_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Requests being answered", registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request; the endpoint label is one of ``paths`` or ``other``."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.paths else "other"
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                reason = scope.get("state", {}).get(REASON_KEY) or _default_reason(status)
                self.metrics.errors.labels(endpoint, str(status), reason).inc()


def _default_reason(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(status, "error")
