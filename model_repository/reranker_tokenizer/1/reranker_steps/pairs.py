"""The ``reranker_tokenizer`` step: (query, documents) -> padded pair tensors, without Triton.

Two pair semantics, each the rule of the library a model family was trained and evaluated with
(docs/families.md). Both tokenize the query and the passage without special tokens and build the
pair with the tokenizer's own pair template (``<s> q </s></s> p </s>`` for XLM-R,
``[CLS] q [SEP] p [SEP]`` for BERT), read once from its post-processor, by slicing id arrays:

- ``flag``, FlagReranker's (FlagEmbedding ``encoder_only/base.py``, the BGE rerankers): the query is
  cut to ``query_max_length``, then the pair is ``only_second``-truncated to ``max_length``;
- ``longest_first``, the tokenizer's ``longest_first`` truncation at ``max_length`` (sentence-
  transformers ``CrossEncoder``, TEI, Jina v2's ``compute_score``): the longer side is cut first,
  and when both are long each keeps half the budget (:func:`longest_first_lengths`).

Long passages are either truncated (one row per document) or, in window mode, split into
overlapping windows (several rows per document, with ``document_index`` saying whose). With
``longest_first`` the query of a windowed document is cut as truncation would cut it against the
whole passage, so the first window is always the truncated pair. Rows are padded to the smallest
length bucket that holds the longest, so Triton's dynamic batcher can merge requests of like length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BadRequest
from .params import StepParameters

if TYPE_CHECKING:
    from tokenizers import Tokenizer

KNOWN_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DOCUMENT_INDEX = "document_index"
OVERFLOW_MODES = ("truncate", "window")
PAIR_SEMANTICS = ("flag", "longest_first")
DEFAULTS = {
    "tokenizer_file": "tokenizer.json",
    "max_length": "512",
    "pair_semantics": "flag",
    "query_max_length": "",  # flag only; empty: max_length * 3 // 4, as FlagReranker
    "overflow": "truncate",
    "window_stride": "256",
    "length_buckets": "",  # empty: the single bucket max_length
    "max_documents": "64",
    "max_rows": "128",
    "max_query_bytes": "8192",
    "max_document_bytes": "65536",
    "max_request_bytes": "2097152",
    "model_inputs": "input_ids,attention_mask",
    "pad_token_id": "",  # empty: taken from the tokenizer (<pad> / [PAD])
}

Row = tuple[int, int, int]
"""(document, first passage token, passage tokens) of one model row."""


# -- request text ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TextLimits:
    """What one request may carry; past a limit it is refused with a message that says so."""

    max_documents: int = 64
    max_query_bytes: int = 8192
    max_document_bytes: int = 65536
    max_request_bytes: int = 2097152


def read_texts(
    query_raw: np.ndarray | None, documents_raw: np.ndarray | None, limits: TextLimits
) -> tuple[str, list[str]]:
    """The request's query and documents as text, or ``BadRequest`` saying what to change.

    Sizes are checked before decoding, so an oversized request costs no UTF-8 work.
    """
    if query_raw is None or documents_raw is None:
        raise BadRequest("send both inputs: 'query' (BYTES [1]) and 'documents' (BYTES [N])")
    if query_raw.size != 1:
        raise BadRequest(f"'query' must hold exactly one string (shape [1]), got shape {list(query_raw.shape)}")
    if documents_raw.ndim != 1:
        raise BadRequest(f"'documents' must be a 1-D list of strings, got shape {list(documents_raw.shape)}")
    n = documents_raw.shape[0]
    if n == 0:
        raise BadRequest("'documents' is empty: send at least one document")
    if n > limits.max_documents:
        raise BadRequest(
            f"too many documents: {n} > {limits.max_documents} per request; split the list "
            f"(the client does this automatically)"
        )
    query_bytes = _as_bytes(query_raw.reshape(-1)[0])
    if len(query_bytes) > limits.max_query_bytes:
        raise BadRequest(f"query is {len(query_bytes)} bytes, over the limit of {limits.max_query_bytes}; shorten it")
    documents_bytes = [_as_bytes(d) for d in documents_raw]
    total = len(query_bytes)
    for i, doc in enumerate(documents_bytes):
        if len(doc) > limits.max_document_bytes:
            raise BadRequest(
                f"document {i} is {len(doc)} bytes, over the limit of {limits.max_document_bytes}; shorten or split it"
            )
        total += len(doc)
    if total > limits.max_request_bytes:
        raise BadRequest(
            f"request text is {total} bytes, over the limit of {limits.max_request_bytes}; "
            f"send fewer or shorter documents per request"
        )
    try:
        query = query_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"query is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not query.strip():
        raise BadRequest("query is empty or blank: send the search query text")
    documents = []
    for i, doc in enumerate(documents_bytes):
        try:
            documents.append(doc.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"document {i} is not valid UTF-8 ({exc.reason} at byte {exc.start}); send UTF-8 text"
            ) from None
    return query, documents


def _as_bytes(value: Any) -> bytes:
    # Triton hands BYTES elements over as bytes; be lenient with str for local callers.
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


# -- pair template --------------------------------------------------------------------------------


class PairTemplate:
    """The special tokens around (query, passage) as the tokenizer's post-processor places them.

    Derived once by post-processing two probe encodings: the positions its
    ``special_tokens_mask`` leaves unmarked are the query's tokens, then the passage's.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        probe = tokenizer.encode_batch(["a b c", "d e f g"], add_special_tokens=False)
        q_probe, p_probe = probe[0].ids, probe[1].ids
        if not q_probe or not p_probe:
            raise ValueError("cannot derive the pair template: the tokenizer encodes probe text to nothing")
        pair = tokenizer.post_process(probe[0], probe[1], add_special_tokens=True)
        ids, types = pair.ids, pair.type_ids
        content = [i for i, special in enumerate(pair.special_tokens_mask) if not special]
        q_pos, p_pos = content[: len(q_probe)], content[len(q_probe) :]
        if (
            [ids[i] for i in content] != q_probe + p_probe
            or q_pos != list(range(q_pos[0], q_pos[0] + len(q_probe)))
            or p_pos != list(range(p_pos[0], p_pos[0] + len(p_probe)))
            or len({types[i] for i in q_pos}) != 1
            or len({types[i] for i in p_pos}) != 1
        ):
            raise ValueError(
                f"unsupported pair template (ids {ids}, special mask {pair.special_tokens_mask}); "
                f"expected specials, query, specials, passage, specials"
            )
        a0, b0 = q_pos[0], p_pos[0]
        a1, b1 = q_pos[-1] + 1, p_pos[-1] + 1
        self.prefix = np.asarray(ids[:a0], dtype=np.int64)
        self.middle = np.asarray(ids[a1:b0], dtype=np.int64)
        self.suffix = np.asarray(ids[b1:], dtype=np.int64)
        self.prefix_types = np.asarray(types[:a0], dtype=np.int64)
        self.middle_types = np.asarray(types[a1:b0], dtype=np.int64)
        self.suffix_types = np.asarray(types[b1:], dtype=np.int64)
        self.query_type = int(types[a0])
        self.passage_type = int(types[b0])
        self.num_special = len(self.prefix) + len(self.middle) + len(self.suffix)


# -- rows and padding -------------------------------------------------------------------------------


def longest_first_lengths(query_tokens: int, passage_tokens: int, budget: int) -> tuple[int, int]:
    """(query, passage) tokens kept by ``longest_first`` truncation to ``budget`` content tokens.

    The rule of ``tokenizers``' ``TruncationStrategy::LongestFirst`` (what a fast tokenizer's
    ``truncation=True`` on a pair does): nothing is cut when both fit; else the shorter side is
    kept whole if the longer still gets at least as many tokens, and otherwise each side gets half
    the budget, the longer one the odd token. Both sides keep their first tokens.
    """
    if query_tokens + passage_tokens <= budget:
        return query_tokens, passage_tokens
    short = min(query_tokens, passage_tokens)
    keep_short, keep_long = short, (short if short > budget else max(short, budget - short))
    if keep_short + keep_long > budget:
        keep_short, keep_long = budget // 2, budget // 2 + budget % 2
    if query_tokens > passage_tokens:
        return min(query_tokens, keep_long), min(passage_tokens, keep_short)
    return min(query_tokens, keep_short), min(passage_tokens, keep_long)


def plan_rows(
    passage_lengths: Sequence[int],
    budget: int | Sequence[int],
    *,
    overflow: str,
    window_stride: int,
    max_rows: int,
) -> list[Row]:
    """The model rows for passages of these lengths, ``budget`` passage tokens per row at most.

    ``budget`` is one number for every passage, or one per passage (``longest_first``, where the
    query's share depends on the passage). Truncate: the passage's first ``budget`` tokens (for
    ``flag``, FlagReranker's cut to max_length then ``only_second``). Window: a passage over the
    budget becomes windows ``window_stride`` apart (never more than ``budget``, so no passage
    token is skipped), the last ending at the passage end. More than ``max_rows`` rows (the
    model's max batch size) is a ``BadRequest``.
    """
    budgets = [budget] * len(passage_lengths) if isinstance(budget, int) else list(budget)
    if overflow == "truncate":
        rows = [(i, 0, min(n, b)) for i, (n, b) in enumerate(zip(passage_lengths, budgets, strict=True))]
    else:
        rows = []
        for i, (n, b) in enumerate(zip(passage_lengths, budgets, strict=True)):
            if n <= b:
                rows.append((i, 0, n))
            else:
                starts = list(range(0, n - b, min(window_stride, b)))
                starts.append(n - b)  # the last window ends at the passage end
                rows.extend((i, s, b) for s in starts)
            if len(rows) > max_rows:
                break
    if len(rows) > max_rows:
        what = "windows" if overflow == "window" else "pairs"
        raise BadRequest(
            f"the documents make more than {max_rows} {what} (the model's max batch size); "
            f"send fewer or shorter documents per request (the client splits long lists)"
        )
    return rows


def bucket_width(longest: int, buckets: np.ndarray) -> int:
    """The smallest length bucket that holds ``longest`` tokens (buckets ascending, last = max_length)."""
    return int(buckets[np.searchsorted(buckets, longest)])


def pair_tensors(
    template: PairTemplate,
    query_ids: Sequence[int],
    passages: Sequence[Sequence[int]],
    rows: Sequence[Row],
    *,
    query_lengths: Sequence[int] | None = None,
    width: int | None = None,
    buckets: np.ndarray,
    pad_token_id: int,
    with_token_type_ids: bool,
) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids``) [rows, width], right-padded.

    ``query_lengths`` gives the query tokens each document's rows keep (``longest_first``);
    ``None`` keeps all of ``query_ids`` in every row. ``width`` defaults to the bucket of the
    longest row.
    """
    t = template
    query = np.asarray(query_ids, dtype=np.int64)
    kept = [len(query) if query_lengths is None else query_lengths[i] for i, _, _ in rows]
    heads = [len(t.prefix) + q + len(t.middle) for q in kept]  # row position where the passage starts
    lengths = np.asarray([a + n + len(t.suffix) for a, (_, _, n) in zip(heads, rows, strict=True)], dtype=np.int64)
    if width is None:
        width = bucket_width(int(lengths.max()), buckets)
    input_ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    for r, ((i, start, n), q, a) in enumerate(zip(rows, kept, heads, strict=True)):
        input_ids[r, :a] = np.concatenate([t.prefix, query[:q], t.middle])
        input_ids[r, a : a + n] = passages[i][start : start + n]
        input_ids[r, a + n : a + n + len(t.suffix)] = t.suffix
        if with_token_type_ids:
            token_type_ids[r, :a] = np.concatenate(
                [t.prefix_types, np.full(q, t.query_type, dtype=np.int64), t.middle_types]
            )
            token_type_ids[r, a : a + n] = t.passage_type
            token_type_ids[r, a + n : a + n + len(t.suffix)] = t.suffix_types  # padding stays 0
    attention_mask = (np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]).astype(np.int64)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_token_type_ids:
        tensors["token_type_ids"] = token_type_ids
    return tensors


# -- the step -------------------------------------------------------------------------------------


class PairEncoder:
    """The whole tokenizer step: request tensors in, the model's input tensors out."""

    def __init__(self, tokenizer: Tokenizer, params: StepParameters) -> None:
        # Padding and truncation happen here with numpy; the tokenizer must return raw ids.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        # encode_batch_fast (tokenizers >= 0.20) skips offsets, which are not needed here.
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.template = PairTemplate(tokenizer)

        self.max_length = params.integer("max_length", 8)
        self.pair_semantics = params.text("pair_semantics")
        if self.pair_semantics not in PAIR_SEMANTICS:
            raise ValueError(
                f"parameter pair_semantics must be one of {', '.join(PAIR_SEMANTICS)}, got {self.pair_semantics!r}"
            )
        self.query_max_length: int | None = None  # longest_first cuts the query per pair, in encode
        if self.pair_semantics == "longest_first":
            if params.text("query_max_length"):
                raise ValueError("parameter query_max_length applies to pair_semantics flag only; leave it empty")
        else:
            self.query_max_length = (
                params.integer("query_max_length") if params.text("query_max_length") else self.max_length * 3 // 4
            )
            if self.query_max_length + self.template.num_special >= self.max_length:
                raise ValueError(
                    f"query_max_length ({self.query_max_length}) + special tokens ({self.template.num_special}) "
                    f"must be < max_length ({self.max_length}) so every pair keeps passage tokens"
                )
        self.overflow = params.text("overflow")
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"parameter overflow must be 'truncate' or 'window', got {self.overflow!r}")
        self.window_stride = params.integer("window_stride")
        buckets = params.integers("length_buckets") or [self.max_length]
        if buckets != sorted(set(buckets)) or buckets[0] < 1 or buckets[-1] != self.max_length:
            raise ValueError(
                f"length_buckets must be ascending positive integers ending at max_length "
                f"({self.max_length}), got {params.text('length_buckets')!r}"
            )
        self.buckets = np.asarray(buckets, dtype=np.int64)
        self.limits = TextLimits(
            max_documents=params.integer("max_documents"),
            max_query_bytes=params.integer("max_query_bytes"),
            max_document_bytes=params.integer("max_document_bytes"),
            max_request_bytes=params.integer("max_request_bytes"),
        )
        self.max_rows = params.integer("max_rows")
        self.model_inputs = [name.strip() for name in params.text("model_inputs").split(",") if name.strip()]
        unknown = [name for name in self.model_inputs if name not in KNOWN_MODEL_INPUTS]
        if unknown or "input_ids" not in self.model_inputs:
            raise ValueError(
                f"model_inputs must include input_ids and name only {', '.join(KNOWN_MODEL_INPUTS)}, "
                f"got {self.model_inputs}"
            )
        if params.text("pad_token_id"):
            self.pad_token_id = params.integer("pad_token_id", 0)
        else:
            pad = next((i for t in ("<pad>", "[PAD]") if (i := tokenizer.token_to_id(t)) is not None), None)
            if pad is None:
                raise ValueError("set parameter pad_token_id: the tokenizer has no <pad> or [PAD] token")
            self.pad_token_id = pad

    @classmethod
    def from_file(cls, tokenizer_path: str, params: StepParameters) -> PairEncoder:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(tokenizer_path), params)

    @property
    def output_names(self) -> list[str]:
        """The tensors ``encode`` returns, in the step's output order."""
        return [*self.model_inputs, *([DOCUMENT_INDEX] if self.overflow == "window" else [])]

    def encode_request(self, query_raw: np.ndarray | None, documents_raw: np.ndarray | None) -> dict[str, np.ndarray]:
        """From the request's BYTES tensors; ``BadRequest`` for a request the caller must change."""
        return self.encode(*read_texts(query_raw, documents_raw, self.limits))

    def encode(self, query: str, documents: Sequence[str]) -> dict[str, np.ndarray]:
        """The model's inputs for (query, each document), plus ``document_index`` in window mode."""
        encodings = self._encode_batch([query, *documents], add_special_tokens=False)
        passages = [e.ids for e in encodings[1:]]
        content = self.max_length - self.template.num_special  # query + passage tokens per row
        query_lengths: list[int] | None = None
        if self.pair_semantics == "flag":
            query_ids = encodings[0].ids[: self.query_max_length]
            budget: int | list[int] = content - len(query_ids)  # passage tokens per row, >= 1
        else:
            query_ids = encodings[0].ids
            query_lengths = [longest_first_lengths(len(query_ids), len(p), content)[0] for p in passages]
            budget = [content - q for q in query_lengths]
        rows = plan_rows(
            [len(p) for p in passages],
            budget,
            overflow=self.overflow,
            window_stride=self.window_stride,
            max_rows=self.max_rows,
        )
        tensors = pair_tensors(
            self.template,
            query_ids,
            passages,
            rows,
            query_lengths=query_lengths,
            buckets=self.buckets,
            pad_token_id=self.pad_token_id,
            with_token_type_ids="token_type_ids" in self.model_inputs,
        )
        outputs = {name: tensors[name] for name in self.model_inputs}
        if self.overflow == "window":
            outputs[DOCUMENT_INDEX] = np.asarray([i for i, _, _ in rows], dtype=np.int32)
        return outputs
