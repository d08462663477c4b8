"""The test-model builder: tiny cross-encoders that load like hub models and rank by topic."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from reranker_export import testmodels as tm

XLMR = tm.TestModelKind.XLM_ROBERTA
BERT = tm.TestModelKind.BERT


@pytest.fixture(scope="module", params=list(tm.TestModelKind), ids=lambda kind: kind.value)
def built(request: pytest.FixtureRequest) -> tuple[tm.TestModelKind, Path]:
    """Each kind as the session built it (conftest.py): the suite trains each model once."""
    kind: tm.TestModelKind = request.param
    model = request.getfixturevalue("built_xlmr" if kind is XLMR else "built_bert")
    assert any("held-out top-1" in line for line in model.progress)
    assert model.progress[-1] == f"saved to {model.path}"
    return kind, model.path


def _load(path: Path) -> tuple[PreTrainedTokenizerBase, torch.nn.Module]:
    return AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path).eval()


def _scores(path: Path, pairs: list[tuple[str, str]], truncation: str = "only_second") -> list[float]:
    tokenizer, model = _load(path)
    inputs = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        padding=True,
        truncation=truncation,
        max_length=512,
        return_tensors="pt",
    )
    with torch.inference_mode():
        return model(**inputs).logits.view(-1).tolist()


# --- corpus and example sets ----------------------------------------------------------------


def test_corpus_has_every_topic_and_language_in_both_splits() -> None:
    cells = collections.Counter((e.topic, e.language, e.kind, e.split) for e in tm.corpus())
    for topic in tm.TOPICS:
        for language in tm.LANGUAGES:
            assert cells[topic, language, "passage", "train"] == 4
            assert cells[topic, language, "passage", "test"] == 2
            assert cells[topic, language, "query", "train"] == 2
            assert cells[topic, language, "query", "test"] == 1
            assert tm.lexicon()[topic, language]
    train = {e.text for e in tm.corpus() if e.split == "train"}
    held_out = {e.text for e in tm.corpus() if e.split == "test"}
    assert not train & held_out
    assert len(train | held_out) == len(tm.corpus())  # no duplicate sentences


def test_relevance_examples_are_held_out_with_one_relevant_document() -> None:
    entries = {e.text: e for e in tm.corpus()}
    examples = tm.relevance_examples(seed=3, count=120)
    assert len(examples) == 120
    assert examples == tm.relevance_examples(seed=3, count=120)
    assert examples != tm.relevance_examples(seed=4, count=120)
    for example in examples:
        query = entries[example.query]
        assert query.split == "test" and query.kind == "query"
        assert 5 <= len(example.documents) <= 8
        documents = [entries[d] for d in example.documents]
        assert all(d.split == "test" and d.kind == "passage" and d.language == query.language for d in documents)
        same_topic = [i for i, d in enumerate(documents) if d.topic == query.topic]
        assert same_topic == [example.relevant_index]
    assert {entries[e.query].language for e in examples} == set(tm.LANGUAGES)
    assert len(tm.relevance_examples()) == 20
    with pytest.raises(ValueError, match="count"):
        tm.relevance_examples(count=0)


def test_long_document_and_probes_truncate_in_both_tokenizers(built: tuple[tm.TestModelKind, Path]) -> None:
    _, path = built
    tokenizer = AutoTokenizer.from_pretrained(path)

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert len(tm.long_document(400).split()) == 400
    assert length(tm.long_document(400)) > 512
    pairs = tm.multilingual_probe_pairs()
    assert len(pairs) >= 12
    assert sum(length(p) > 512 for _, p in pairs) >= 3
    assert sum(length(q) > 384 for q, _ in pairs) >= 1
    assert sum(length(q) + length(p) < 64 for q, p in pairs) >= 6
    # The probes cover every language and need no <unk>: FlagReranker (transformers 5) decodes and
    # re-encodes ids, which moves "▁" around an <unk>, so probes with <unk> would not compare.
    text = " ".join(q + " " + p for q, p in pairs)
    assert all(any(e.text in text for e in tm.corpus() if e.language == lang) for lang in tm.LANGUAGES)
    assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"]


# --- building -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(tm.TestModelKind), ids=lambda kind: kind.value)
def test_same_seed_same_weights(kind: tm.TestModelKind, tmp_path: Path) -> None:
    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    paths = [
        tm.build_test_model(tmp_path / name, kind=kind, seed=seed, train_steps=20)
        for name, seed in (("a", 0), ("b", 0), ("c", 1))
    ]
    assert torch.get_num_threads() == threads  # the caller's torch settings are left alone
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    weights = [load_file(path / "model.safetensors") for path in paths]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not all(torch.equal(weights[0][name], weights[2][name]) for name in weights[0])
    assert (paths[0] / "tokenizer.json").read_bytes() == (paths[1] / "tokenizer.json").read_bytes()
    pairs = tm.multilingual_probe_pairs()  # one query alone is past 512 tokens: cut both sides
    assert _scores(paths[0], pairs, "longest_first") == _scores(paths[1], pairs, "longest_first")


def test_build_rejects_negative_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_steps"):
        tm.build_test_model(tmp_path, train_steps=-1)


# --- what the saved directory looks like ----------------------------------------------------


def test_saved_directory_loads_with_auto_classes(built: tuple[tm.TestModelKind, Path]) -> None:
    kind, path = built
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    tokenizer, model = _load(path)
    assert tokenizer.is_fast
    assert tokenizer.model_max_length == 512
    config = model.config
    assert config.num_labels == 1
    assert config.vocab_size == len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id
    if kind is XLMR:
        assert type(model).__name__ == "XLMRobertaForSequenceClassification"
        assert type(tokenizer).__name__.startswith("XLMRobertaTokenizer")
        assert config.max_position_embeddings == 514
        assert [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
        assert tokenizer.mask_token == "<mask>"
    else:
        assert type(model).__name__ == "BertForSequenceClassification"
        assert type(tokenizer).__name__.startswith("BertTokenizer")
        assert config.max_position_embeddings == 512
        assert config.type_vocab_size == 2
    # A 512-token pair runs (positions suffice) and gives a finite score.
    inputs = tokenizer("query", tm.long_document(800), truncation="only_second", max_length=512, return_tensors="pt")
    assert inputs["input_ids"].shape == (1, 512)
    with torch.inference_mode():
        assert math.isfinite(model(**inputs).logits.item())


def test_pair_format(built: tuple[tm.TestModelKind, Path]) -> None:
    kind, path = built
    tokenizer = AutoTokenizer.from_pretrained(path)
    query, passage = "weather forecast", "rain and wind tomorrow"
    q = tokenizer(query, add_special_tokens=False)["input_ids"]
    p = tokenizer(passage, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(query, passage)
    if kind is XLMR:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        assert encoded["input_ids"] == [bos, *q, eos, eos, *p, eos]
        assert tokenizer.decode(encoded["input_ids"]) == f"<s> {query}</s></s> {passage}</s>"
        assert "token_type_ids" not in encoded
    else:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        assert encoded["input_ids"] == [cls, *q, sep, *p, sep]
        assert tokenizer.decode(encoded["input_ids"]) == f"[CLS] {query} [SEP] {passage} [SEP]"
        assert encoded["token_type_ids"] == [0] * (len(q) + 2) + [1] * (len(p) + 1)


def test_tokenizer_json_alone_encodes_like_auto_tokenizer(built: tuple[tm.TestModelKind, Path]) -> None:
    # A serving step that loads tokenizer.json with `tokenizers` must see the ids transformers sees.
    _, path = built
    tokenizer = AutoTokenizer.from_pretrained(path)
    saved = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["truncation"] is None and saved["padding"] is None  # as in hub files
    backend = Tokenizer.from_file(str(path / "tokenizer.json"))
    pairs = [*tm.multilingual_probe_pairs(), ("a  b\t\tc", " \n leading and trailing \n ")]
    for query, passage in pairs:
        raw = backend.encode(query, passage)
        auto = tokenizer(query, passage)
        assert raw.ids == auto["input_ids"]
        assert raw.type_ids == auto.get("token_type_ids", [0] * len(raw.ids))


# --- ranking --------------------------------------------------------------------------------


def test_relevant_document_ranks_first_on_held_out_examples(built: tuple[tm.TestModelKind, Path]) -> None:
    _, path = built
    for examples in (tm.relevance_examples(), tm.relevance_examples(count=96)):
        pairs = [(e.query, d) for e in examples for d in e.documents]
        scores = iter(_scores(path, pairs))
        correct = 0
        for example in examples:
            mine = [next(scores) for _ in example.documents]
            correct += mine.index(max(mine)) == example.relevant_index
        assert correct >= 0.8 * len(examples), f"{correct}/{len(examples)}"


def test_flag_reranker_scores_match_plain_torch(built: tuple[tm.TestModelKind, Path]) -> None:
    from FlagEmbedding import FlagReranker

    _, path = built
    reranker = FlagReranker(str(path), use_fp16=False, devices="cpu")
    pairs = tm.multilingual_probe_pairs()
    scores = reranker.compute_score(pairs)
    assert len(scores) == len(pairs)
    assert all(math.isfinite(s) for s in scores)
    # Where FlagReranker's own query cut (384 tokens) does not apply, it sees the same pair encoding.
    tokenizer = AutoTokenizer.from_pretrained(path)
    kept = [i for i, (q, _) in enumerate(pairs) if len(tokenizer(q, add_special_tokens=False)["input_ids"]) <= 384]
    assert len(kept) >= 10
    expected = _scores(path, [pairs[i] for i in kept])
    assert [scores[i] for i in kept] == pytest.approx(expected, abs=1e-4)
    # Scores spread out: relevant pairs above unrelated ones, not a constant.
    assert max(scores) - min(scores) > 1.0
