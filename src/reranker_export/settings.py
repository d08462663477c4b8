"""Typed settings shared by the export, the repository renderer and the serving steps.

Every knob that ends up in a ``config.pbtxt`` lives here, once. Settings are frozen,
keyword-only dataclasses; closed choices are enums. Nothing reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# The contract names along the ensemble, re-exported: their one home is reranker_client.config.
from reranker_client.config import (
    ATTENTION_MASK as ATTENTION_MASK,
)
from reranker_client.config import (
    CANARY_PRIORITY as CANARY_PRIORITY,
)
from reranker_client.config import (
    CORE_MODEL_NAME as CORE_MODEL_NAME,
)
from reranker_client.config import (
    DEFAULT_PRIORITY as DEFAULT_PRIORITY,
)
from reranker_client.config import (
    DOCUMENT_INDEX as DOCUMENT_INDEX,
)
from reranker_client.config import (
    DOCUMENTS as DOCUMENTS,
)
from reranker_client.config import (
    ENSEMBLE_NAME as ENSEMBLE_NAME,
)
from reranker_client.config import (
    INPUT_IDS as INPUT_IDS,
)
from reranker_client.config import (
    LOGITS as LOGITS,
)
from reranker_client.config import (
    QUERY as QUERY,
)
from reranker_client.config import (
    SCORES as SCORES,
)
from reranker_client.config import (
    SCORES_MODEL_NAME as SCORES_MODEL_NAME,
)
from reranker_client.config import (
    TOKEN_TYPE_IDS as TOKEN_TYPE_IDS,
)
from reranker_client.config import (
    TOKENIZER_MODEL_NAME as TOKENIZER_MODEL_NAME,
)

DEFAULT_MODEL_ID = "BAAI/bge-reranker-v2-m3"


class Choice(str, Enum):
    """A setting with a few named values; prints as its value (``cpu``, not ``Profile.CPU``) in
    ``--help``, messages and f-strings."""

    def __str__(self) -> str:
        return str(self.value)


class Profile(Choice):
    """Where ``reranker_model`` runs (see DESIGN.md, "Model repository profiles")."""

    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"
    CPU = "cpu"


class Overflow(Choice):
    """What the tokenizer step does with a passage longer than the token budget."""

    TRUNCATE = "truncate"  # FlagReranker parity: cut the passage (``only_second``)
    WINDOW = "window"  # overlapping windows, score = max over the windows


class PairSemantics(Choice):
    """How a (query, passage) pair is cut to ``max_length``: the rule of the library the model was
    trained and evaluated with (docs/families.md). Chosen from the model at export
    (``reranker_export.families``) unless set."""

    FLAG = "flag"
    """FlagEmbedding's FlagReranker (BGE rerankers): query cut to ``query_max_length``, passage
    ``only_second``-truncated."""
    LONGEST_FIRST = "longest_first"
    """sentence-transformers ``CrossEncoder``, TEI, Jina v2's ``compute_score``: the tokenizer's
    ``longest_first`` truncation of the pair at ``max_length``."""


class Precision(Choice):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    """``cpu`` profile only: fused graph with dynamic INT8 weights, gated by ranking agreement."""


@dataclass(frozen=True, kw_only=True)
class TokenizerSettings:
    """Pair encoding and request limits of the ``reranker_tokenizer`` step."""

    max_length: int = 512
    """Tokens per (query, passage) pair, special tokens included (FlagReranker ``max_length``)."""
    pair_semantics: PairSemantics | None = None
    """``None``: chosen from the model at export; a render without a model renders ``flag``
    (the default model's)."""
    query_max_length: int | None = None
    """``flag`` only: query tokens kept; ``None`` means ``max_length * 3 // 4`` as in FlagReranker."""
    overflow: Overflow = Overflow.TRUNCATE
    window_stride: int = 256
    """Window mode: passage tokens between the starts of two consecutive windows."""
    length_buckets: tuple[int, ...] = (64, 128, 256, 512)
    """Sequence lengths the batch is padded to, so concurrent requests share a dynamic batch."""
    max_documents: int = 64
    max_query_bytes: int = 8 * 1024
    max_document_bytes: int = 64 * 1024
    max_request_bytes: int = 2 * 1024 * 1024

    @property
    def effective_pair_semantics(self) -> PairSemantics:
        return self.pair_semantics or PairSemantics.FLAG

    @property
    def effective_query_max_length(self) -> int:
        return self.query_max_length if self.query_max_length is not None else self.max_length * 3 // 4

    @property
    def effective_length_buckets(self) -> tuple[int, ...]:
        """Buckets up to ``max_length``, always ending at ``max_length`` itself."""
        kept = sorted({b for b in self.length_buckets if b < self.max_length})
        return (*kept, self.max_length)

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")
        if self.pair_semantics is PairSemantics.LONGEST_FIRST and self.query_max_length is not None:
            raise ValueError(
                "query_max_length applies to the flag pair semantics only; longest_first cuts the query "
                "and the passage together (drop --query-max-length, or use --pair-semantics flag)"
            )
        qml = self.effective_query_max_length
        if not 1 <= qml < self.max_length - 4:
            raise ValueError(f"query_max_length must be in [1, max_length - 4), got {qml}")
        if self.window_stride < 1:
            raise ValueError(f"window_stride must be positive, got {self.window_stride}")
        if not self.length_buckets or any(b < 1 for b in self.length_buckets):
            raise ValueError(f"length_buckets must be positive integers, got {self.length_buckets}")
        if self.max_documents < 1:
            raise ValueError(f"max_documents must be positive, got {self.max_documents}")
        for name in ("max_query_bytes", "max_document_bytes", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, kw_only=True)
class QueueSettings:
    """Triton's queue policy (``default_queue_policy``) on every step that queues requests.

    Under overload a queue without bounds grows until every caller has given up, and the server
    then computes answers nobody waits for (goodput collapses, and the backlog outlives the burst).
    Each step's queue is therefore bounded, and a request that waits too long is rejected
    (UNAVAILABLE, ``timeout_action: REJECT``) instead of computed. Callers lower the wait with their
    own deadline (``allow_timeout_override``; the Python client sends it), never raise it past
    ``timeout_us``. Sizing: docs/overload.md.
    """

    max_queue_size: int = 128
    """Requests waiting per step; one more is refused at once ("Exceeds maximum queue size").
    0 leaves the queue unbounded."""
    timeout_us: int = 10_000_000
    """Longest wait in a step's queue, for requests that carry no shorter deadline of their own
    (the Python client's default deadline). Callers' deadlines do the shedding: the client sends
    each request's remaining time, so an interactive caller's request leaves the queue when its
    caller would give up, while a batch job with a long deadline is not shed for waiting."""

    def __post_init__(self) -> None:
        if self.max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {self.max_queue_size}")
        # Triton applies a caller's timeout only when it is below the default one, so 0 (no
        # default) would silently ignore every caller's deadline.
        if self.timeout_us < 1:
            raise ValueError(f"the queue timeout must be positive, got {self.timeout_us} µs")


@dataclass(frozen=True, kw_only=True)
class ServingSettings:
    """Everything the repository renderer needs besides the exported files."""

    profile: Profile = Profile.TENSORRT
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    max_batch_size: int = 128
    """Rows (pairs or windows) per ``reranker_model`` execution; bounds rows per request."""
    max_queue_delay_us: int = 1000
    """How long dynamic batching waits for more requests to merge."""
    queue: QueueSettings = field(default_factory=QueueSettings)
    tokenizer_instances: int = 2
    model_instances: int = 1
    precision: Precision = Precision.FP16
    """Engine/ONNX precision for the GPU profiles (fp16, fp32); the ``cpu`` profile runs FP32, or INT8."""
    graph_fusion: bool = False
    """``cpu`` profile: serve onnxruntime's fused transformer graph (INT8 always is)."""
    ort_intra_op_threads: int = 0
    """onnxruntime intra-op threads for the ``cpu`` profile; 0 lets onnxruntime use every core."""
    cpu_sub_batch_rows: int = 8
    """``cpu`` profile: rows per onnxruntime run, sorted by length so each run pads only to its own
    longest row (padding costs as much as real tokens on CPU); 0 runs each batch whole."""

    def __post_init__(self) -> None:
        if self.max_batch_size < self.tokenizer.max_documents:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) must be >= max_documents "
                f"({self.tokenizer.max_documents}): one request's rows must fit one model execution"
            )
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us must be >= 0")
        if self.cpu_sub_batch_rows < 0:
            raise ValueError("cpu_sub_batch_rows must be >= 0")
        if self.tokenizer_instances < 1 or self.model_instances < 1:
            raise ValueError("instance counts must be positive")
        if self.profile is not Profile.CPU and (self.precision is Precision.INT8 or self.graph_fusion):
            raise ValueError("--precision int8 and --graph-fusion are for the cpu profile (onnxruntime on CPU)")

    @property
    def model_precision(self) -> Precision:
        if self.profile is Profile.CPU:
            return Precision.INT8 if self.precision is Precision.INT8 else Precision.FP32
        return self.precision
