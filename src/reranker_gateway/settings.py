"""The gateway's settings: one frozen dataclass, built by the CLI or by a caller of ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass

from reranker_client.config import ENSEMBLE_NAME

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_DOCUMENTS = 10_000
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_HEALTH_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """What one gateway serves, and the limits it enforces before anything reaches Triton."""

    triton_url: str
    """gRPC target of the Triton server (``localhost:8001`` in the Kubernetes sidecar)."""
    model_name: str = ENSEMBLE_NAME
    """The name this gateway answers to in ``model`` (requests that omit ``model`` get it too)."""
    triton_model: str = ENSEMBLE_NAME
    """The ensemble the gateway calls on Triton."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """Deadline of each rerank, all its split requests and retries included; past it: 504."""
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    """Documents per HTTP request; more is 413. The client splits them into Triton-sized requests."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Request body size; larger is 413 before the body is read."""
    api_keys: tuple[str, ...] = ()
    """Bearer tokens accepted on the rerank endpoints; empty: no authentication."""
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    """``Retry-After`` on 503 answers (Triton unavailable, overloaded or not ready)."""
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S
    """Deadline of the canary rerank behind ``GET /health``."""
    max_attempts: int | None = None
    """Attempts per Triton request while it is UNAVAILABLE (the client's retries); ``None``: as many
    as the deadline allows."""

    def __post_init__(self) -> None:
        if not self.triton_url:
            raise ValueError("triton_url must not be empty")
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        for name in ("timeout_s", "health_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_documents", "max_body_bytes", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and have no surrounding whitespace")
