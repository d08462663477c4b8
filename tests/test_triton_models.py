"""The python-backend models (tokenizer, cpu-profile model, window aggregation) in a real Triton server.

One server serves a small hand-written repository: tokenizer variants (XLM-R truncate, BERT with
token_type_ids, XLM-R window mode), the onnxruntime model step, the aggregation step, and two
ensembles wiring them as the renderer does. Expected pairs come from FlagReranker's own
tokenization code (HF tokenizer + ``prepare_for_model_compat``).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS_SRC = Path(__file__).resolve().parents[1] / "export" / "triton_models"

MAX_LENGTH = 32
QUERY_MAX_LENGTH = 12
BUCKETS = (16, 24, 32)
MAX_DOCUMENTS = 8
MAX_ROWS = 32
WINDOW_STRIDE = 8
MAX_QUERY_BYTES = 400
MAX_DOCUMENT_BYTES = 1500
MAX_REQUEST_BYTES = 6000
XLMR_PAD, BERT_PAD = 1, 0


# -- tiny models built on the spot -----------------------------------------------------------


def _corpus(seed: int = 0, sentences: int = 600) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ter", "sun", "bra", "vel", "né", "ül", "ße", "при", "вет", "東京", "語"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(150)]
    out = []
    for _ in range(sentences):
        sent = " ".join(rng.choice(words) for _ in range(rng.randint(3, 14)))
        out.append(sent.capitalize() + rng.choice([".", "!", "?", ","]))
    return out


def _text(rng: random.Random, corpus: Sequence[str], sentences: int) -> str:
    return " ".join(rng.choice(corpus) for _ in range(sentences))


def build_xlmr_tokenizer(folder: Path) -> Path:
    """Unigram + Metaspace with XLM-R's specials and pair template, as transformers 5 rebuilds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, XLM-R's order
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512})
    )
    return folder


def build_bert_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(
        _corpus(1), trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512})
    )
    return folder


def build_xlmr_model(folder: Path) -> Path:
    """A tiny random XLM-R cross-encoder (one logit) saved next to its tokenizer, plus model.onnx."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    build_xlmr_tokenizer(folder)
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH * 4 + 2,
        pad_token_id=XLMR_PAD,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        initializer_range=0.5,  # HF's 0.02 gives a tiny random model near-constant scores
    )
    model = XLMRobertaForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    ids = torch.ones(2, 16, dtype=torch.int64)
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        str(folder / "model.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={
            "input_ids": {0: "rows", 1: "length"},
            "attention_mask": {0: "rows", 1: "length"},
            "logits": {0: "rows"},
        },
    )
    return folder


# -- a small repository written by hand (the real renderer replaces this) -------------------


def _params(values: dict[str, Any]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


def _tokenizer_config(name: str, *, overflow: str, model_inputs: Sequence[str], pad: int) -> str:
    outputs = [f'{{ name: "{n}" data_type: TYPE_INT64 dims: [ -1, -1 ] }}' for n in model_inputs]
    if overflow == "window":
        outputs.append('{ name: "document_index" data_type: TYPE_INT32 dims: [ -1 ] }')
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "query" data_type: TYPE_STRING dims: [ 1 ] }},
        {{ name: "documents" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {", ".join(outputs)} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
""" + _params(
        {
            "tokenizer_file": "tokenizer.json",
            "max_length": MAX_LENGTH,
            "query_max_length": QUERY_MAX_LENGTH,
            "overflow": overflow,
            "window_stride": WINDOW_STRIDE,
            "length_buckets": ",".join(map(str, BUCKETS)),
            "max_documents": MAX_DOCUMENTS,
            "max_rows": MAX_ROWS,
            "max_query_bytes": MAX_QUERY_BYTES,
            "max_document_bytes": MAX_DOCUMENT_BYTES,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "model_inputs": ",".join(model_inputs),
            "pad_token_id": pad,
        }
    )


# The model step batches for up to 0.3 s so concurrent test requests meet in one execute().
MODEL_CONFIG = f"""
name: "model_xlmr"
backend: "python"
max_batch_size: {MAX_ROWS}
dynamic_batching {{ max_queue_delay_microseconds: 300000 }}
input [ {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
        {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
""" + _params(
    {
        "model_file": "model.onnx",
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "pad_token_id": XLMR_PAD,
    }
)

# reranker_model's logits are [rows, 1] (dims [1]); the ensemble validates a step's inputs
# against its config, so the aggregation step declares [-1, 1].
SCORES_CONFIG = """
name: "scores"
backend: "python"
max_batch_size: 0
input [ { name: "logits" data_type: TYPE_FP32 dims: [ -1, 1 ] },
        { name: "document_index" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model}" model_version: -1 {" ".join(maps)} }}'


def _ensemble_config(name: str, tokenizer: str, *, window: bool) -> str:
    pair = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    request = {"query": "query", "documents": "documents"}
    if window:
        steps = [
            _step(tokenizer, request, {**pair, "document_index": "document_index"}),
            _step("model_xlmr", pair, {"logits": "logits"}),
            _step("scores", {"logits": "logits", "document_index": "document_index"}, {"scores": "scores"}),
        ]
        output = '{ name: "scores" data_type: TYPE_FP32 dims: [ -1 ] }'
    else:
        steps = [_step(tokenizer, request, pair), _step("model_xlmr", pair, {"logits": "scores"})]
        # The step gives [rows, 1]; a reshape on the ensemble output turns it into [N] (no extra step).
        output = '{ name: "scores" data_type: TYPE_FP32 dims: [ -1 ] reshape: { shape: [ -1, 1 ] } }'
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "query" data_type: TYPE_STRING dims: [ 1 ] }},
        {{ name: "documents" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {output} ]
ensemble_scheduling {{ step [ {", ".join(steps)} ] }}
"""


def _add_model(repo: Path, name: str, config: str, source: str, files: Sequence[Path] = ()) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    shutil.copy(MODELS_SRC / source / "model.py", version / "model.py")
    for f in files:
        shutil.copy(f, version / f.name)


def write_repository(repo: Path, xlmr: Path, bert: Path) -> Path:
    xlmr_inputs, bert_inputs = (
        ("input_ids", "attention_mask"),
        ("input_ids", "attention_mask", "token_type_ids"),
    )
    tok = "reranker_tokenizer"
    _add_model(
        repo,
        "tok_xlmr",
        _tokenizer_config("tok_xlmr", overflow="truncate", model_inputs=xlmr_inputs, pad=XLMR_PAD),
        tok,
        [xlmr / "tokenizer.json"],
    )
    _add_model(
        repo,
        "tok_bert",
        _tokenizer_config("tok_bert", overflow="truncate", model_inputs=bert_inputs, pad=BERT_PAD),
        tok,
        [bert / "tokenizer.json"],
    )
    _add_model(
        repo,
        "tok_window",
        _tokenizer_config("tok_window", overflow="window", model_inputs=xlmr_inputs, pad=XLMR_PAD),
        tok,
        [xlmr / "tokenizer.json"],
    )
    _add_model(repo, "model_xlmr", MODEL_CONFIG, "reranker_model", [xlmr / "model.onnx"])
    _add_model(repo, "scores", SCORES_CONFIG, "reranker_scores")
    for name, tokenizer, window in (("ens_truncate", "tok_xlmr", False), ("ens_window", "tok_window", True)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(_ensemble_config(name, tokenizer, window=window))
    return repo


# -- fixtures ----------------------------------------------------------------------------------


@dataclass
class Env:
    url: str
    xlmr: Path
    bert: Path

    def client(self) -> Any:
        return tritonclient_grpc.InferenceServerClient(self.url)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from reranker_serve import TritonServer

    root = tmp_path_factory.mktemp("triton_models")
    xlmr = build_xlmr_model(root / "xlmr")
    bert = build_bert_tokenizer(root / "bert")
    repo = write_repository(root / "repo", xlmr, bert)
    with TritonServer(repo, log_file=root / "triton.log") as server:
        yield Env(url=server.grpc_url, xlmr=xlmr, bert=bert)


@pytest.fixture(scope="module")
def texts() -> dict[str, Any]:
    corpus = _corpus(7, 200)
    rng = random.Random(3)
    return {
        "query": _text(rng, corpus, 1),
        "long_query": _text(rng, corpus, 4),  # far over QUERY_MAX_LENGTH tokens
        "short": [_text(rng, corpus, 1)[:20] for _ in range(3)],
        "long": [_text(rng, corpus, 6) for _ in range(3)],  # over MAX_LENGTH: truncated / windowed
    }


# -- helpers -----------------------------------------------------------------------------------


def _bytes_input(name: str, values: Sequence[bytes | str]) -> Any:
    data = np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)
    tensor = tritonclient_grpc.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def call(
    env: Env,
    model: str,
    query: bytes | str | Sequence[bytes | str],
    documents: Sequence[bytes | str],
    outputs: Sequence[str],
) -> dict[str, np.ndarray]:
    queries = [query] if isinstance(query, (str, bytes)) else list(query)
    result = env.client().infer(model, [_bytes_input("query", queries), _bytes_input("documents", documents)])
    return {name: result.as_numpy(name) for name in outputs}


def flag_pairs(model_dir: Path, query: str, documents: Sequence[str]) -> list[dict[str, list[int]]]:
    """Pairs exactly as FlagReranker.compute_score_single_gpu builds them."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    q = hf([query], add_special_tokens=False, max_length=QUERY_MAX_LENGTH, truncation=True)["input_ids"][0]
    ps = hf(list(documents), add_special_tokens=False, max_length=MAX_LENGTH, truncation=True)["input_ids"]
    return [
        dict(
            prepare_for_model_compat(hf, q, p, truncation="only_second", max_length=MAX_LENGTH, padding=False)
        )
        for p in ps
    ]


def raw_ids(model_dir: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def expect_invalid(env: Env, model: str, inputs: Sequence[Any], *phrases: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        env.client().infer(model, list(inputs))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    message = info.value.message()
    for phrase in phrases:
        assert phrase in message, message
    return message


def _unpad(out: dict[str, np.ndarray], name: str, row: int) -> list[int]:
    return out[name][row][out["attention_mask"][row] == 1].tolist()


# -- tokenizer: pair semantics ---------------------------------------------------------------


def test_xlmr_pairs_equal_flagreranker(env: Env, texts: dict[str, Any]) -> None:
    documents = [*texts["short"], *texts["long"]]
    for query in (texts["query"], texts["long_query"]):
        out = call(env, "tok_xlmr", query, [*documents, ""], ["input_ids", "attention_mask"])
        expected = flag_pairs(env.xlmr, query, documents)
        assert out["input_ids"].shape[0] == len(documents) + 1
        for row, pair in enumerate(expected):
            assert _unpad(out, "input_ids", row) == pair["input_ids"], row
            # padding: pad id with mask 0 after the pair, nothing else
            n = len(pair["input_ids"])
            assert out["attention_mask"][row, :n].all() and not out["attention_mask"][row, n:].any()
            assert (out["input_ids"][row, n:] == XLMR_PAD).all()
        # An empty document is an empty passage, <s> q </s></s></s>, as FlagReranker builds it
        # from ids with transformers 4. (Under transformers 5 its text round trip drops the
        # empty second text and builds <s> q </s>.)
        q = raw_ids(env.xlmr, query)[:QUERY_MAX_LENGTH]
        assert _unpad(out, "input_ids", len(documents)) == [0, *q, 2, 2, 2]
    # the cases that matter were exercised: a truncated pair and a truncated query
    assert max(len(p["input_ids"]) for p in expected) == MAX_LENGTH
    assert len(raw_ids(env.xlmr, texts["long_query"])) > QUERY_MAX_LENGTH


def test_id_level_pairs_equal_text_round_trip(env: Env, texts: dict[str, Any]) -> None:
    """FlagReranker under transformers 5 decodes and re-tokenizes; for ordinary text that equals
    the id-level construction (the model's training semantics) the server implements."""
    query = texts["long_query"]
    q = raw_ids(env.xlmr, query)[:QUERY_MAX_LENGTH]
    for doc, pair in zip(texts["long"], flag_pairs(env.xlmr, query, texts["long"]), strict=True):
        budget = MAX_LENGTH - len(q) - 4
        assert pair["input_ids"] == [0, *q, 2, 2, *raw_ids(env.xlmr, doc)[:budget], 2]


def test_bert_pairs_and_token_type_ids(env: Env, texts: dict[str, Any]) -> None:
    documents = [*texts["short"], *texts["long"]]
    query = texts["long_query"]
    out = call(env, "tok_bert", query, [*documents, ""], ["input_ids", "attention_mask", "token_type_ids"])
    expected = flag_pairs(env.bert, query, documents)
    for row, pair in enumerate(expected):
        assert _unpad(out, "input_ids", row) == pair["input_ids"], row
        assert _unpad(out, "token_type_ids", row) == pair["token_type_ids"], row
        n = len(pair["input_ids"])
        assert (out["input_ids"][row, n:] == BERT_PAD).all() and not out["token_type_ids"][row, n:].any()
    assert any(1 in p["token_type_ids"] for p in expected)
    assert max(len(p["input_ids"]) for p in expected) == MAX_LENGTH
    q = raw_ids(env.bert, query)[:QUERY_MAX_LENGTH]  # empty passage: [CLS] q [SEP] [SEP]
    assert _unpad(out, "input_ids", len(documents)) == [2, *q, 3, 3]
    assert _unpad(out, "token_type_ids", len(documents)) == [0] * (len(q) + 2) + [1]


def test_pads_to_the_smallest_bucket(env: Env, texts: dict[str, Any]) -> None:
    widths = {}
    for doc in ("ka", _text(random.Random(5), _corpus(7, 50), 1), texts["long"][0]):
        (longest,) = {len(p["input_ids"]) for p in flag_pairs(env.xlmr, "lo mi", [doc])}
        out = call(env, "tok_xlmr", "lo mi", [doc, ""], ["input_ids", "attention_mask"])
        width = out["input_ids"].shape[1]
        assert width == min(b for b in BUCKETS if b >= longest), (longest, width)
        widths[longest] = width
        assert out["attention_mask"].sum(axis=1).max() == longest
    assert len(set(widths.values())) >= 2, widths  # more than one bucket was exercised


# -- tokenizer: bad input --------------------------------------------------------------------


def _docs(n: int, text: str = "ka lo") -> list[str]:
    return [text] * n


BAD_REQUESTS = {
    "no_documents": (["lo mi"], [], ["at least one document"]),
    "too_many_documents": (["lo mi"], _docs(MAX_DOCUMENTS + 1), ["too many documents", "split the list"]),
    "invalid_utf8": (["lo mi"], ["ka", "lo", b"ka \xff\xfe lo"], ["document 2", "UTF-8"]),
    "invalid_utf8_query": ([b"\xc3\x28"], ["ka"], ["query", "UTF-8"]),
    "blank_query": (["  \t "], ["ka"], ["query is empty"]),
    "empty_query": ([""], ["ka"], ["query is empty"]),
    "document_too_large": (
        ["lo mi"],
        ["ka", "x" * (MAX_DOCUMENT_BYTES + 1)],
        ["document 1", str(MAX_DOCUMENT_BYTES + 1), str(MAX_DOCUMENT_BYTES)],
    ),
    "query_too_large": (["lo " * MAX_QUERY_BYTES], ["ka"], ["query is", str(MAX_QUERY_BYTES)]),
    "request_too_large": (
        ["lo mi"],
        _docs(MAX_DOCUMENTS, "k" * MAX_DOCUMENT_BYTES),
        ["request text", str(MAX_REQUEST_BYTES)],
    ),
    "two_queries": (["lo", "mi"], ["ka"], ["query"]),  # refused by Triton's shape check (dims [1])
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument(env: Env, case: str) -> None:
    queries, documents, phrases = BAD_REQUESTS[case]
    expect_invalid(
        env, "tok_xlmr", [_bytes_input("query", queries), _bytes_input("documents", documents)], *phrases
    )
    # the server keeps serving, correctly
    client = env.client()
    assert client.is_server_ready() and client.is_model_ready("tok_xlmr")
    out = call(env, "tok_xlmr", "lo mi", ["ka"], ["input_ids"])
    assert (
        _unpad({**out, "attention_mask": out["input_ids"] != XLMR_PAD}, "input_ids", 0)
        == flag_pairs(env.xlmr, "lo mi", ["ka"])[0]["input_ids"]
    )


def test_wrong_dtype_is_invalid_argument(env: Env) -> None:
    documents = tritonclient_grpc.InferInput("documents", [2], "INT32")
    documents.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    expect_invalid(env, "tok_xlmr", [_bytes_input("query", ["lo"]), documents], "documents")


def test_window_mode_refuses_too_many_rows(env: Env, texts: dict[str, Any]) -> None:
    long_doc = " ".join(texts["long"])  # many windows each
    expect_invalid(
        env,
        "tok_window",
        [_bytes_input("query", ["lo"]), _bytes_input("documents", [long_doc] * 4)],
        f"more than {MAX_ROWS} windows",
    )


def test_bad_request_does_not_fail_concurrent_good_ones(env: Env, texts: dict[str, Any]) -> None:
    documents = [*texts["short"], texts["long"][0]]
    expected = [p["input_ids"] for p in flag_pairs(env.xlmr, texts["query"], documents)]

    def good() -> list[list[int]]:
        out = call(env, "tok_xlmr", texts["query"], documents, ["input_ids", "attention_mask"])
        return [_unpad(out, "input_ids", r) for r in range(len(documents))]

    def bad() -> str:
        return expect_invalid(
            env,
            "tok_xlmr",
            [_bytes_input("query", ["lo"]), _bytes_input("documents", ["ka", b"\xff"])],
            "document 1",
        )

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(bad if i % 4 == 1 else good) for i in range(16)]
        results = [f.result() for f in futures]
    assert all(r == expected for i, r in enumerate(results) if i % 4 != 1)


# -- tokenizer: window mode ------------------------------------------------------------------


def test_window_rows_cover_each_passage(env: Env, texts: dict[str, Any]) -> None:
    query = texts["query"]
    documents = [texts["short"][0], texts["long"][0], "", texts["long"][1]]
    out = call(env, "tok_window", query, documents, ["input_ids", "attention_mask", "document_index"])
    q = raw_ids(env.xlmr, query)[:QUERY_MAX_LENGTH]
    budget = MAX_LENGTH - len(q) - 4
    head = [0, *q, 2, 2]
    rows = out["document_index"].tolist()
    assert rows == sorted(rows) and set(rows) == set(range(len(documents)))
    for d, doc in enumerate(documents):
        p = raw_ids(env.xlmr, doc)
        windows = [_unpad(out, "input_ids", r) for r in range(len(rows)) if rows[r] == d]
        if len(p) <= budget:
            assert windows == [[*head, *p, 2]]
            continue
        assert len(windows) > 1
        starts = [*range(0, len(p) - budget, WINDOW_STRIDE), len(p) - budget]
        assert windows == [[*head, *p[s : s + budget], 2] for s in starts]
        assert all(len(w) == MAX_LENGTH for w in windows)


# -- the model step and the aggregation step -------------------------------------------------


def _int_input(name: str, array: np.ndarray) -> Any:
    tensor = tritonclient_grpc.InferInput(name, list(array.shape), "INT64")
    tensor.set_data_from_numpy(array.astype(np.int64))
    return tensor


def _onnx_logits(env: Env, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(env.xlmr / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def _executions(env: Env) -> int:
    stats = env.client().get_inference_statistics("model_xlmr", as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0))


def test_model_batches_requests_and_isolates_a_failing_one(env: Env, texts: dict[str, Any]) -> None:
    documents = [*texts["short"], *texts["long"]]
    tok = call(env, "tok_xlmr", texts["query"], documents, ["input_ids", "attention_mask"])
    ids, mask = tok["input_ids"], tok["attention_mask"]
    expected = _onnx_logits(env, ids, mask)
    assert expected.shape == (len(documents), 1) and np.ptp(expected) > 0.1
    bad_ids = ids.copy()
    bad_ids[0, 1] = 10**6  # outside the vocabulary: onnxruntime refuses the whole run

    def score(i: int) -> np.ndarray | str:
        # requests of different row counts (same length) share one batch
        n = 1 + i % len(documents)
        inputs = [
            _int_input("input_ids", bad_ids[:n] if i == 3 else ids[:n]),
            _int_input("attention_mask", mask[:n]),
        ]
        try:
            return env.client().infer("model_xlmr", inputs).as_numpy("logits")
        except InferenceServerException as exc:
            return exc.message()

    before = _executions(env)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(score, range(8)))
    assert _executions(env) - before < 8, "the dynamic batcher did not merge any requests"
    for i, result in enumerate(results):
        if i == 3:
            assert isinstance(result, str) and "reranker_model" in result
        else:
            n = 1 + i % len(documents)
            assert isinstance(result, np.ndarray) and result.shape == (n, 1)
            np.testing.assert_allclose(result, expected[:n], rtol=1e-5, atol=1e-5)


def test_scores_step_takes_max_per_document(env: Env) -> None:
    logits = np.array([[0.5], [2.0], [-1.0], [3.0], [-4.0], [-3.5]], dtype=np.float32)
    index = np.array([0, 0, 1, 2, 3, 3], dtype=np.int32)
    lg = tritonclient_grpc.InferInput("logits", list(logits.shape), "FP32")
    lg.set_data_from_numpy(logits)
    ix = tritonclient_grpc.InferInput("document_index", list(index.shape), "INT32")
    ix.set_data_from_numpy(index)
    scores = env.client().infer("scores", [lg, ix]).as_numpy("scores")
    np.testing.assert_array_equal(scores, np.array([2.0, -1.0, 3.0, -3.5], dtype=np.float32))
    ix = tritonclient_grpc.InferInput("document_index", [4], "INT32")
    ix.set_data_from_numpy(index[:4])
    expect_invalid(env, "scores", [lg, ix], "one document per logit row")


# -- ensembles wired as the renderer wires them ----------------------------------------------


def test_truncate_ensemble_gives_n_scores_equal_to_flagreranker(env: Env, texts: dict[str, Any]) -> None:
    from FlagEmbedding import FlagReranker

    # No empty document here: see test_xlmr_pairs_equal_flagreranker.
    documents = [*texts["short"], *texts["long"]]
    out = call(env, "ens_truncate", texts["long_query"], documents, ["scores"])["scores"]
    assert out.shape == (len(documents),)  # the ensemble output's reshape drops the model's trailing 1
    reranker = FlagReranker(
        str(env.xlmr), use_fp16=False, devices="cpu", max_length=MAX_LENGTH, query_max_length=QUERY_MAX_LENGTH
    )
    expected = reranker.compute_score([(texts["long_query"], d) for d in documents], normalize=False)
    assert np.ptp(expected) > 0.1, expected  # the scores tell documents apart
    np.testing.assert_allclose(out, np.asarray(expected, dtype=np.float32), rtol=1e-4, atol=1e-4)


def test_window_ensemble_scores_are_the_best_window(env: Env, texts: dict[str, Any]) -> None:
    documents = [texts["long"][2], texts["short"][1], texts["long"][0]]
    scores = call(env, "ens_window", texts["query"], documents, ["scores"])["scores"]
    rows = call(
        env, "tok_window", texts["query"], documents, ["input_ids", "attention_mask", "document_index"]
    )
    logits = _onnx_logits(env, rows["input_ids"], rows["attention_mask"]).reshape(-1)
    per_document = [logits[rows["document_index"] == d] for d in range(len(documents))]
    expected = [w.max() for w in per_document]
    # max over windows matters here: some document's best window is not its first one
    assert any(w.argmax() > 0 for w in per_document), per_document
    assert scores.shape == (len(documents),)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
