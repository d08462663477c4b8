"""Triton python-backend model ``reranker_tokenizer``: (query, documents) -> padded pair tensors.

Self-contained (copied verbatim to ``<repo>/reranker_tokenizer/1/model.py``): it imports only
``tokenizers``, ``numpy``, the standard library and ``triton_python_backend_utils``, so it runs
unchanged in NVIDIA's Triton image with ``tokenizers`` added.

Pair semantics are FlagReranker's (FlagEmbedding ``encoder_only/base.py``): the query is tokenized
without special tokens and cut to ``query_max_length``; the passage is tokenized without special
tokens; the pair is the tokenizer's own pair template (``<s> q </s></s> p </s>`` for XLM-R,
``[CLS] q [SEP] p [SEP]`` for BERT) with ``only_second`` truncation to ``max_length``. The template
is read once from the tokenizer's post-processor, so pairs are built by slicing id arrays.

Config parameters (all ``string_value``): ``tokenizer_file``, ``max_length``, ``query_max_length``,
``overflow`` (truncate | window), ``window_stride``, ``length_buckets`` (comma-separated, ascending,
last == max_length), ``max_documents``, ``max_rows``, ``max_query_bytes``, ``max_document_bytes``,
``max_request_bytes``, ``model_inputs`` (comma-separated subset of input_ids, attention_mask,
token_type_ids), ``pad_token_id``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

KNOWN_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULTS = {
    "tokenizer_file": "tokenizer.json",
    "max_length": "512",
    "query_max_length": "",  # empty: max_length * 3 // 4, as FlagReranker
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


class BadRequest(Exception):
    """The request is wrong; the message says what the caller must change."""


def _invalid_argument(message: str) -> Any:
    try:
        error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    except (AttributeError, TypeError):  # python backends older than 23.09 have no error codes
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _internal_error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


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


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        raw = config.get("parameters", {})

        def param(key: str) -> str:
            value = raw.get(key, {}).get("string_value")
            return DEFAULTS[key] if value is None else value.strip()

        def int_param(key: str, minimum: int = 1) -> int:
            try:
                value = int(param(key))
            except ValueError:
                raise ValueError(f"parameter {key} must be an integer, got {param(key)!r}") from None
            if value < minimum:
                raise ValueError(f"parameter {key} must be >= {minimum}, got {value}")
            return value

        path = os.path.join(args["model_repository"], args["model_version"], param("tokenizer_file"))
        self.tokenizer = Tokenizer.from_file(path)
        # Padding and truncation happen here with numpy; the tokenizer must return raw ids.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        # encode_batch_fast (tokenizers >= 0.20) skips offsets, which are not needed here.
        self._encode_batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        self.template = PairTemplate(self.tokenizer)

        self.max_length = int_param("max_length", 8)
        self.query_max_length = (
            int_param("query_max_length") if param("query_max_length") else self.max_length * 3 // 4
        )
        if self.query_max_length + self.template.num_special >= self.max_length:
            raise ValueError(
                f"query_max_length ({self.query_max_length}) + special tokens ({self.template.num_special}) "
                f"must be < max_length ({self.max_length}) so every pair keeps passage tokens"
            )
        self.overflow = param("overflow")
        if self.overflow not in ("truncate", "window"):
            raise ValueError(f"parameter overflow must be 'truncate' or 'window', got {self.overflow!r}")
        self.window_stride = int_param("window_stride")
        buckets_text = param("length_buckets")
        try:
            buckets = [int(b) for b in buckets_text.split(",")] if buckets_text else [self.max_length]
        except ValueError:
            buckets = []
        if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1 or buckets[-1] != self.max_length:
            raise ValueError(
                f"length_buckets must be ascending positive integers ending at max_length "
                f"({self.max_length}), got {buckets_text!r}"
            )
        self.buckets = np.asarray(buckets, dtype=np.int64)
        self.max_documents = int_param("max_documents")
        self.max_rows = int_param("max_rows")
        self.max_query_bytes = int_param("max_query_bytes")
        self.max_document_bytes = int_param("max_document_bytes")
        self.max_request_bytes = int_param("max_request_bytes")
        self.model_inputs = [name.strip() for name in param("model_inputs").split(",") if name.strip()]
        unknown = [name for name in self.model_inputs if name not in KNOWN_MODEL_INPUTS]
        if unknown or "input_ids" not in self.model_inputs:
            raise ValueError(
                f"model_inputs must include input_ids and name only {', '.join(KNOWN_MODEL_INPUTS)}, "
                f"got {self.model_inputs}"
            )
        if param("pad_token_id"):
            self.pad_token_id = int_param("pad_token_id", 0)
        else:
            pad = next(
                (i for t in ("<pad>", "[PAD]") if (i := self.tokenizer.token_to_id(t)) is not None), None
            )
            if pad is None:
                raise ValueError("set parameter pad_token_id: the tokenizer has no <pad> or [PAD] token")
            self.pad_token_id = pad

    # -- request handling ------------------------------------------------------------------------

    def execute(self, requests: list[Any]) -> list[Any]:
        # Each request is answered on its own: a bad one never fails the others in the batch.
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._handle(request)))
            except BadRequest as exc:
                responses.append(_invalid_argument(str(exc)))
            except Exception as exc:  # a bug here must not take the model down
                responses.append(_internal_error(f"reranker_tokenizer failed: {type(exc).__name__}: {exc}"))
        return responses

    def _read(self, request: Any) -> tuple[str, list[str]]:
        query_tensor = pb_utils.get_input_tensor_by_name(request, "query")
        documents_tensor = pb_utils.get_input_tensor_by_name(request, "documents")
        if query_tensor is None or documents_tensor is None:
            raise BadRequest("send both inputs: 'query' (BYTES [1]) and 'documents' (BYTES [N])")
        query_raw = query_tensor.as_numpy()
        documents_raw = documents_tensor.as_numpy()
        if query_raw.size != 1:
            raise BadRequest(
                f"'query' must hold exactly one string (shape [1]), got shape {list(query_raw.shape)}"
            )
        if documents_raw.ndim != 1:
            raise BadRequest(
                f"'documents' must be a 1-D list of strings, got shape {list(documents_raw.shape)}"
            )
        n = documents_raw.shape[0]
        if n == 0:
            raise BadRequest("'documents' is empty: send at least one document")
        if n > self.max_documents:
            raise BadRequest(
                f"too many documents: {n} > {self.max_documents} per request; split the list "
                f"(the client does this automatically)"
            )
        query_bytes = _as_bytes(query_raw.reshape(-1)[0])
        if len(query_bytes) > self.max_query_bytes:
            raise BadRequest(
                f"query is {len(query_bytes)} bytes, over the limit of {self.max_query_bytes}; shorten it"
            )
        documents_bytes = [_as_bytes(d) for d in documents_raw]
        total = len(query_bytes)
        for i, doc in enumerate(documents_bytes):
            if len(doc) > self.max_document_bytes:
                raise BadRequest(
                    f"document {i} is {len(doc)} bytes, over the limit of {self.max_document_bytes}; "
                    f"shorten or split it"
                )
            total += len(doc)
        if total > self.max_request_bytes:
            raise BadRequest(
                f"request text is {total} bytes, over the limit of {self.max_request_bytes}; "
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

    def _handle(self, request: Any) -> list[Any]:
        query, documents = self._read(request)
        encodings = self._encode_batch([query, *documents], add_special_tokens=False)
        q_ids = encodings[0].ids[: self.query_max_length]
        passages = [e.ids for e in encodings[1:]]
        t = self.template
        budget = self.max_length - len(q_ids) - t.num_special  # passage tokens per row, >= 1

        if self.overflow == "truncate":
            # FlagReranker: passage cut to max_length, then only_second truncation of the pair;
            # together that is the passage's first `budget` tokens.
            rows = [(i, 0, min(len(p), budget)) for i, p in enumerate(passages)]
        else:
            rows = []
            stride = min(self.window_stride, budget)  # never skip passage tokens between windows
            for i, p in enumerate(passages):
                if len(p) <= budget:
                    rows.append((i, 0, len(p)))
                else:
                    starts = list(range(0, len(p) - budget, stride))
                    starts.append(len(p) - budget)  # the last window ends at the passage end
                    rows.extend((i, s, budget) for s in starts)
                if len(rows) > self.max_rows:
                    break
        if len(rows) > self.max_rows:
            what = "windows" if self.overflow == "window" else "pairs"
            raise BadRequest(
                f"the documents make more than {self.max_rows} {what} (the model's max batch size); "
                f"send fewer or shorter documents per request (the client splits long lists)"
            )

        head = np.concatenate([t.prefix, np.asarray(q_ids, dtype=np.int64), t.middle])
        a = len(head)
        lengths = np.asarray([a + n + len(t.suffix) for _, _, n in rows], dtype=np.int64)
        width = int(self.buckets[np.searchsorted(self.buckets, lengths.max())])
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        input_ids[:, :a] = head
        for r, (i, start, n) in enumerate(rows):
            if n:
                input_ids[r, a : a + n] = passages[i][start : start + n]
            input_ids[r, a + n : a + n + len(t.suffix)] = t.suffix
        positions = np.arange(width, dtype=np.int64)
        attention_mask = (positions[None, :] < lengths[:, None]).astype(np.int64)

        outputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.model_inputs:
            head_types = np.concatenate(
                [t.prefix_types, np.full(len(q_ids), t.query_type, dtype=np.int64), t.middle_types]
            )
            token_type_ids = np.zeros_like(input_ids)
            token_type_ids[:, :a] = head_types
            # passage and suffix positions: passage type, then the suffix's own types; padding stays 0
            token_type_ids[(positions[None, :] >= a) & (attention_mask == 1)] = t.passage_type
            if len(t.suffix) and np.any(t.suffix_types != t.passage_type):
                for r, (_, _, n) in enumerate(rows):
                    token_type_ids[r, a + n : a + n + len(t.suffix)] = t.suffix_types
            outputs["token_type_ids"] = token_type_ids
        tensors = [pb_utils.Tensor(name, outputs[name]) for name in self.model_inputs]
        if self.overflow == "window":
            document_index = np.asarray([i for i, _, _ in rows], dtype=np.int32)
            tensors.append(pb_utils.Tensor("document_index", document_index))
        return tensors

    def finalize(self) -> None:
        self.tokenizer = None


def _as_bytes(value: Any) -> bytes:
    # Triton hands BYTES elements over as bytes; be lenient with str for local callers.
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
