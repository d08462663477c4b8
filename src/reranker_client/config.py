"""Connection settings of the reranker client: retries, TLS, compression, load balancing."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

# The contract of the ensemble and the names along it (docs/design.md): the one place every
# package imports them from, since the client installs without the export side. (The python
# steps rendered into Triton cannot import this package; tests/test_steps.py keeps theirs equal.)
ENSEMBLE_NAME = "reranker"
TOKENIZER_MODEL_NAME = "reranker_tokenizer"
CORE_MODEL_NAME = "reranker_model"
SCORES_MODEL_NAME = "reranker_scores"  # window mode only: max over windows
QUERY = "query"
DOCUMENTS = "documents"
SCORES = "scores"
# Tensors between the steps.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"  # only for models whose tokenizer emits it (BERT)
DOCUMENT_INDEX = "document_index"  # window mode: which document each row belongs to
LOGITS = "logits"
MAX_DOCUMENTS_PARAMETER = "max_documents"
# Triton request priorities of the steps' queues (1 is served first): health checks jump the
# queue, so that a busy server is not mistaken for a broken one (and restarted under load).
CANARY_PRIORITY = 1
DEFAULT_PRIORITY = 2

ChannelArgs = list[tuple[str, Any]]


class Compression(str, Enum):
    """gRPC message compression for requests (the server answers uncompressed)."""

    NONE = "none"
    GZIP = "gzip"
    DEFLATE = "deflate"

    @property
    def algorithm(self) -> str | None:
        """The value tritonclient's ``compression_algorithm`` expects."""
        return None if self is Compression.NONE else self.value


class LoadBalancing(str, Enum):
    """gRPC client-side load-balancing policy across the addresses a target resolves to."""

    ROUND_ROBIN = "round_robin"
    PICK_FIRST = "pick_first"


@dataclass(frozen=True, kw_only=True)
class TLSConfig:
    """TLS for the channel. Paths to PEM files; all ``None`` uses the system roots."""

    root_certificates: str | None = None
    private_key: str | None = None
    """Client key, for mutual TLS (with ``certificate_chain``)."""
    certificate_chain: str | None = None
    server_name_override: str | None = None
    """Name checked against the server certificate, when it differs from the target host."""

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("mutual TLS needs both private_key and certificate_chain")


@dataclass(frozen=True, kw_only=True)
class RetryBudget:
    """How many retries of shed requests one client may add, so that retries cannot multiply the
    load of a server that is shedding it (a retry storm).

    Over the last ``window_s`` seconds, retries may number at most ``ratio`` times the requests
    sent, or ``min_retries``, whichever is larger: the floor lets a quiet client ride out a
    restart, the ratio caps a busy one at ``1 + ratio`` attempts per request. Only retries of a
    shed (Triton's queue refused the request) count: a refused connection or a dead stub's
    INTERNAL costs its server nothing, and the retry goes to another replica or waits out a
    restart within the deadline.
    """

    ratio: float = 0.1
    min_retries: int = 10
    window_s: float = 10.0

    def __post_init__(self) -> None:
        if self.ratio < 0:
            raise ValueError(f"ratio must be >= 0, got {self.ratio}")
        if self.min_retries < 0:
            raise ValueError(f"min_retries must be >= 0, got {self.min_retries}")
        if self.window_s <= 0:
            raise ValueError(f"window_s must be positive, got {self.window_s}")

    def allows(self, requests: int, retries: int) -> bool:
        """Whether one more retry fits, given the requests and retries of the current window."""
        return retries < max(self.min_retries, self.ratio * requests)


@dataclass(frozen=True, kw_only=True)
class AdaptiveThrottle:
    """Client-side throttling (the Google SRE book's "adaptive throttling"): while the server
    refuses most of what this client sends, the client refuses some requests itself, at once,
    instead of sending them to be refused. On a CPU server a refusal is not free: the request is
    received and tokenized before the model step's queue turns it away, and that CPU is taken
    from the requests being served.

    Over the last ``window_s`` seconds, with ``requests`` attempts (those the client refused
    itself included) and ``accepts`` of them not refused for overload (a shed or a deadline
    miss), the next call is refused locally with probability
    ``max(0, (requests - multiplier * accepts) / (requests + 1))``. Nothing is refused while the
    server accepts at least ``1 / multiplier`` of the attempts; beyond that the client sends
    about ``multiplier`` times what the server accepts. Attempts that failed for other reasons
    (no server, a dead stub) count neither way, so a restart does not leave the client
    throttling a recovered server. A call is decided once, before it is split or sent (its
    retries are bounded by the retry budget instead), and a client with nothing in flight
    always sends. One state per client object, shared by its calls (thread-safe).
    """

    multiplier: float = 2.0
    window_s: float = 3.0

    def __post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.window_s <= 0:
            raise ValueError(f"window_s must be positive, got {self.window_s}")

    def refusal_probability(self, requests: int, accepts: int) -> float:
        """The chance that the next attempt is refused locally, given the current window."""
        return max(0.0, (requests - self.multiplier * accepts) / (requests + 1))


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retries of transient failures: exponential backoff with jitter, bounded by the call's
    deadline and by the client's retry budget; and the client's throttling of an overloaded server.

    Transient: UNAVAILABLE (no server, or a server that shed the request) and, with
    ``retry_stub_failures``, INTERNAL from a python step whose stub process died (another replica,
    or the healed server, answers the retry). Reranking has no side effects, so a retry is safe;
    INVALID_ARGUMENT and every other error is never retried.

    The n-th retry waits ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))`` scaled by a
    uniform factor in ``[1 - jitter, 1 + jitter]``, and never past the deadline.
    """

    max_attempts: int | None = None
    """Attempts per request, the first included; ``None``: as many as the deadline allows."""
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    """Per-client cap on retries; ``None``: only the deadline and ``max_attempts`` bound them."""
    throttle: AdaptiveThrottle | None = field(default_factory=AdaptiveThrottle)
    """Per-client refusal of attempts the server would shed; ``None``: every attempt is sent."""
    retry_stub_failures: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("need 0 < initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        return cls(max_attempts=1, budget=None, throttle=None)

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        factor = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base * factor

    def allows(self, attempts_made: int) -> bool:
        return self.max_attempts is None or attempts_made < self.max_attempts


def channel_args(
    *,
    load_balancing: LoadBalancing,
    retries: RetryPolicy,
    tls: TLSConfig | None = None,
    extra: ChannelArgs | None = None,
) -> ChannelArgs:
    """Channel arguments for tritonclient's ``channel_args``.

    tritonclient drops its own defaults (unlimited message size, keepalive) as soon as
    ``channel_args`` is given, so they are rebuilt here from its own constants first.
    """
    keepalive = KeepAliveOptions()
    args: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_GRPC_MESSAGE_SIZE,
        "grpc.max_receive_message_length": MAX_GRPC_MESSAGE_SIZE,
        "grpc.keepalive_time_ms": keepalive.keepalive_time_ms,
        "grpc.keepalive_timeout_ms": keepalive.keepalive_timeout_ms,
        "grpc.keepalive_permit_without_calls": keepalive.keepalive_permit_without_calls,
        "grpc.http2.max_pings_without_data": keepalive.http2_max_pings_without_data,
        "grpc.lb_policy_name": load_balancing.value,
        # gRPC backs reconnection off up to 120 s by default; while disconnected every RPC fails
        # fast, so a restarted replica would stay unused long after it is back. Keep the channel's
        # reconnect backoff in step with the retry backoff.
        "grpc.initial_reconnect_backoff_ms": max(1, round(retries.initial_backoff_s * 1000)),
        "grpc.max_reconnect_backoff_ms": max(1, round(retries.max_backoff_s * 1000)),
    }
    if tls is not None and tls.server_name_override is not None:
        args["grpc.ssl_target_name_override"] = tls.server_name_override
    for key, value in extra or ():
        args[key] = value
    return list(args.items())
