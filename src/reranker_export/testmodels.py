"""Tiny cross-encoders built offline in seconds, for tests, demos and CI.

The Hugging Face hub is out of reach where the tests run, so the test suite builds its own
models from a small multilingual corpus written for the project (``testdata/``: eight topics,
six languages, a train and a held-out split, and a topic lexicon). Two architectures show the
pipeline is model-agnostic:

- ``xlm-roberta``: ``XLMRobertaForSequenceClassification`` with a sentencepiece-style Unigram
  tokenizer, the special tokens and pair format of bge-reranker-v2-m3 (``<s> q </s></s> p </s>``);
- ``bert``: ``BertForSequenceClassification`` with a WordPiece tokenizer, ``[CLS] q [SEP] p [SEP]``
  and ``token_type_ids``, like the ms-marco MiniLM cross-encoders.

How a 2-layer model learns relevance in a few hundred steps: its word embeddings start from
the topic statistics of the training text (what pretrained embeddings would bring) and stay
fixed while the layers learn to compare the query's topic with the passage's, from listwise
groups (one same-topic passage, three other-topic ones) that mix natural sentences, synthetic
texts drawn from each topic's vocabulary, and cross-lingual pairs. Nothing of the held-out
split is trained on, so :func:`relevance_examples` measures generalisation.

Its ~600 lines are one job end to end (corpus, tokenizers, warm start, training, saving) with one
public entry point, :func:`build_test_model`; split up, its private steps would only call each other.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import random
import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, XLMRobertaConfig

__all__ = [
    "LANGUAGES",
    "MAX_LENGTH",
    "TOPICS",
    "CorpusEntry",
    "RelevanceExample",
    "TestModelKind",
    "bge_reranker_v2_m3_config",
    "build_test_model",
    "corpus",
    "lexicon",
    "long_document",
    "multilingual_probe_pairs",
    "relevance_examples",
]


class TestModelKind(str, Enum):
    """Architecture of a test model."""

    __test__ = False  # not a pytest test class, despite the name

    XLM_ROBERTA = "xlm-roberta"
    BERT = "bert"


LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "zh", "ru")
TOPICS: tuple[str, ...] = ("weather", "cooking", "football", "space", "health", "trains", "computers", "gardening")
MAX_LENGTH = 512
"""``model_max_length`` of the saved tokenizers; the models have the positions for it."""

Kind = Literal["query", "passage"]
Split = Literal["train", "test"]


@dataclass(frozen=True, kw_only=True)
class CorpusEntry:
    """One sentence of the corpus: a short query or a passage on one topic, in one language."""

    topic: str
    language: str
    kind: Kind
    split: Split
    """``"train"``: the models learn from it; ``"test"``: held out."""
    text: str


@dataclass(frozen=True)
class RelevanceExample:
    """A held-out query with candidate documents, exactly one of them relevant."""

    query: str
    documents: tuple[str, ...]
    relevant_index: int


def _testdata(name: str) -> str:
    return (resources.files("reranker_export") / "testdata" / name).read_text(encoding="utf-8")


def _records(name: str, fields: int) -> Iterator[tuple[int, list[str]]]:
    for number, line in enumerate(_testdata(name).splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            parts = [part.strip() for part in line.split(" | ")]
            if len(parts) != fields or not all(parts):
                raise ValueError(f"testdata/{name}:{number}: expected {fields} fields separated by ' | '")
            yield number, parts


@functools.cache
def corpus() -> tuple[CorpusEntry, ...]:
    """Every sentence of the corpus, by language then topic (``testdata/<language>.txt``)."""
    entries: list[CorpusEntry] = []
    for language in LANGUAGES:
        for number, (topic, kind, split, text) in _records(f"{language}.txt", 4):
            if topic not in TOPICS or kind not in ("query", "passage") or split not in ("train", "test"):
                raise ValueError(f"testdata/{language}.txt:{number}: bad topic, kind or split")
            entries.append(CorpusEntry(topic=topic, language=language, kind=kind, split=split, text=text))  # type: ignore[arg-type]
    return tuple(entries)


@functools.cache
def lexicon() -> dict[tuple[str, str], tuple[str, ...]]:
    """Topic vocabulary by (topic, language) (``testdata/lexicon.txt``); used for training only."""
    words: dict[tuple[str, str], tuple[str, ...]] = {}
    for number, (topic, language, text) in _records("lexicon.txt", 3):
        if topic not in TOPICS or language not in LANGUAGES:
            raise ValueError(f"testdata/lexicon.txt:{number}: unknown topic or language")
        words[topic, language] = tuple(text.split())
    return words


def _texts(
    *, topic: str | None = None, language: str | None = None, kind: Kind | None = None, split: Split | None = None
) -> list[str]:
    return [
        e.text
        for e in corpus()
        if (topic is None or e.topic == topic)
        and (language is None or e.language == language)
        and (kind is None or e.kind == kind)
        and (split is None or e.split == split)
    ]


# --------------------------------------------------------------------------------------------
# Held-out examples and probe texts
# --------------------------------------------------------------------------------------------


def relevance_examples(*, seed: int = 1, count: int = 20) -> list[RelevanceExample]:
    """Held-out ranking examples: a query and 5-8 documents in its language, one on its topic.

    Neither the queries nor the documents were used to train the test models. The distractors
    are held-out passages of other topics in the same language, so ranking needs the topic,
    not the language. There are 96 distinct (query, relevant document) combinations; a larger
    ``count`` repeats them with other distractors. The same seed gives the same examples.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    rng = random.Random(seed)
    combos = [
        (topic, language, query, positive)
        for topic in TOPICS
        for language in LANGUAGES
        for query in _texts(topic=topic, language=language, kind="query", split="test")
        for positive in _texts(topic=topic, language=language, kind="passage", split="test")
    ]
    examples: list[RelevanceExample] = []
    while len(examples) < count:
        rng.shuffle(combos)
        for topic, language, query, positive in combos[: count - len(examples)]:
            others = rng.sample([t for t in TOPICS if t != topic], rng.randint(4, 7))
            documents = [rng.choice(_texts(topic=t, language=language, kind="passage", split="test")) for t in others]
            relevant_index = rng.randint(0, len(documents))
            documents.insert(relevant_index, positive)
            examples.append(RelevanceExample(query=query, documents=tuple(documents), relevant_index=relevant_index))
    return examples


def long_document(words: int) -> str:
    """A long multilingual passage of exactly ``words`` whitespace-separated words.

    Passages of every topic and language, interleaved so consecutive sentences change language.
    400 words are well past 512 tokens in either test tokenizer (a Chinese sentence counts as
    one word but is a dozen tokens or more).
    """
    if words < 1:
        raise ValueError(f"words must be positive, got {words}")
    groups = [_texts(topic=t, language=lang, kind="passage") for t in TOPICS for lang in LANGUAGES]
    sentences = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]
    tokens: list[str] = []
    while len(tokens) < words:
        for sentence in sentences:
            tokens.extend(sentence.split())
    return " ".join(tokens[:words])


def multilingual_probe_pairs() -> list[tuple[str, str]]:
    """Fixed (query, passage) probes: six languages, cross-lingual, short and long.

    Some passages are far past 512 tokens (they truncate), two queries are past 384 tokens
    (FlagReranker's default ``query_max_length`` for ``max_length=512``), one pair has
    irregular whitespace and punctuation.
    """

    def first(topic: str, language: str, kind: Kind) -> str:
        return _texts(topic=topic, language=language, kind=kind, split="test")[0]

    return [
        (first("weather", "en", "query"), first("weather", "en", "passage")),
        (first("cooking", "de", "query"), first("cooking", "de", "passage")),
        (first("football", "fr", "query"), first("football", "fr", "passage")),
        (first("space", "es", "query"), first("space", "es", "passage")),
        (first("health", "zh", "query"), first("health", "zh", "passage")),
        (first("trains", "ru", "query"), first("trains", "ru", "passage")),
        (first("computers", "en", "query"), first("computers", "zh", "passage")),
        (first("gardening", "de", "query"), first("weather", "ru", "passage")),
        ("  weather\tforecast   for the WEEKEND?!  ", "Rain, wind (40 km/h) & snow... Temperature: -3 to 5."),
        (first("space", "en", "query"), long_document(700)),
        (first("trains", "ru", "query"), first("trains", "ru", "passage") + " " + long_document(900)),
        (long_document(450), first("cooking", "es", "passage")),
        (long_document(600), long_document(800)),
    ]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

_DEFAULT_TRAIN_STEPS = 400
_VOCAB_SIZE = 4000
_HIDDEN = 64
_TRAIN_MAX_LENGTH = 128  # training texts are short; keeps the steps cheap
_GROUPS_PER_STEP = 16
_NEGATIVES_PER_GROUP = 3
_LEARNING_RATE = 2e-3
_CROSS_LINGUAL_SHARE = 0.3
_SYNTHETIC_SHARE = 0.5  # of the monolingual groups
_WARM_START_SCALE = 3.0
_LEXICON_WEIGHT = 3.0  # a lexicon word counts as this many occurrences in the topic statistics
_PRIOR = 0.5  # additive smoothing of p(topic | token)
_PUNCTUATION = ",.?!¿¡:;"
# Every printable ASCII character and common typography stay known even where the corpus lacks
# them, as in a real multilingual vocabulary (fewer <unk>s in probes and user text).
_ALPHABET = sorted(set(string.ascii_letters + string.digits + string.punctuation + "°–—…«»„“”‘’€£¥§×·"))
_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def bge_reranker_v2_m3_config() -> XLMRobertaConfig:
    """The full-size architecture of BAAI/bge-reranker-v2-m3 (its ``config.json``; ~568M parameters).

    With random weights it stands in for the real checkpoint where the hub is out of reach:
    export size and memory, graph checks, benchmarks of the model step.
    """
    from transformers import XLMRobertaConfig

    config = XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=8194,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )
    config.num_labels = 1  # one logit: a cross-encoder reranker
    return config


def build_test_model(
    output_dir: Path,
    *,
    kind: TestModelKind = TestModelKind.XLM_ROBERTA,
    seed: int = 0,
    train_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train a tiny cross-encoder and its tokenizer; save both into ``output_dir``; return it.

    ``output_dir`` then loads with ``AutoModelForSequenceClassification`` and ``AutoTokenizer``
    (fast tokenizer, ``model_max_length`` 512) and with FlagEmbedding's ``FlagReranker``.
    The same ``seed`` and ``train_steps`` give the same weights. Training runs on one torch thread
    (the caller's thread count is restored after) and leaves the caller's torch RNG state alone.
    """
    kind = TestModelKind(kind)
    steps = _DEFAULT_TRAIN_STEPS if train_steps is None else train_steps
    if steps < 0:
        raise ValueError(f"train_steps must be >= 0, got {steps}")
    say = progress or (lambda _line: None)
    output_dir = Path(output_dir)

    texts = [e.text for e in corpus()] + [" ".join(words) for words in lexicon().values()]
    say(f"training a {kind.value} tokenizer on {len(texts)} texts in {len(LANGUAGES)} languages")
    tokenizer = _xlmr_tokenizer(texts) if kind is TestModelKind.XLM_ROBERTA else _bert_tokenizer(texts)

    with _seeded_torch(seed):
        model = _new_model(kind, tokenizer)
        _warm_start(model, _topic_statistics(tokenizer), seed=seed)
        n_params = sum(p.numel() for p in model.parameters())
        say(f"training {type(model).__name__} ({n_params / 1e3:.0f}k parameters) for {steps} steps")
        _train(model, tokenizer, _TrainingData(tokenizer, random.Random(seed)), steps=steps, say=say)
        model.eval()
        correct, total = _top1(model, tokenizer, relevance_examples(count=96))
    say(f"held-out top-1: {correct}/{total} ({correct / total:.0%})")

    # Calls with truncation/padding leave them set on the backend; tokenizer.json must not carry
    # them (hub files have none), or a step that loads it with `tokenizers` inherits them.
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    say(f"saved to {output_dir}")
    return output_dir


@contextlib.contextmanager
def _seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch without disturbing the caller's RNG; one thread, so results do not depend on the host."""
    import torch

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _xlmr_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerBase:
    """A Unigram (sentencepiece-style) tokenizer with XLM-R's special tokens, ids and pair template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    # The pre-tokenizer XLMRobertaTokenizer builds, so training sees what inference sees.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=special,
        unk_token="<unk>",
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    trained: list[tuple[str, float]] = [(p, s) for p, s in json.loads(backend.to_str())["model"]["vocab"]]
    if [piece for piece, _ in trained[: len(special)]] != special:
        raise AssertionError(f"special tokens out of place: {trained[: len(special)]}")
    # The trainer's pieces are reproducible but its scores differ in the last bits from run to run
    # (float sums in hash-map order), which reorders near ties: round them and fix the order.
    trained = trained[: len(special)] + sorted(
        ((piece, round(score, 1)) for piece, score in trained[len(special) :]), key=lambda ps: (-ps[1], ps[0])
    )
    # On a corpus this small the trainer cuts common words into pieces shared across topics
    # ("der" -> "▁de" "r") and keeps sentence-specific runs of Chinese characters. Whole words
    # as pieces (as WordPiece keeps them) and single Chinese characters plus the lexicon's
    # Chinese words make token meanings learnable; the trained pieces stay as the fallback.
    best = max(score for _, score in trained[len(special) :])
    vocab = [(p, s) for p, s in trained if not (_CJK.search(p) and len(p.lstrip("▁")) > 1)]
    known = {piece for piece, _ in vocab}
    words: set[str] = set()
    for text in texts:
        for word in text.split():
            if _CJK.search(word):
                continue
            for run in re.finditer(r"[^\W\d_]+", word):
                words.add("▁" + run.group() if run.start() == 0 else run.group())
    for language_words in lexicon().values():
        for word in language_words:
            if _CJK.search(word) and len(word) > 1:
                words.update((word, "▁" + word))
    vocab += [(word, best) for word in sorted(words - known)]
    # transformers builds the pipeline from the vocabulary itself, so the saved tokenizer.json
    # and AutoTokenizer agree exactly (transformers 5 rebuilds XLM-R tokenizers from the class).
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=MAX_LENGTH)


def _bert_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerBase:
    """A lowercasing WordPiece tokenizer with BERT's special tokens and pair template.

    The vocabulary comes from corpus counts rather than from ``WordPieceTrainer``, whose merges
    break ties in hash-map order and so differ from run to run: every word (as BERT's normalizer
    and pre-tokenizer see it), every character alone and as ``##`` continuation, and the word
    beginnings and ``##`` endings shared by three words or more, for words the corpus lacks.
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # As BertTokenizer(do_lower_case=True) builds them: lowercase, strip accents, split CJK chars.
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {
        word
        for text in [*texts, " ".join(_ALPHABET)]
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    }
    characters = {c for word in words for c in word}
    affixes: collections.Counter[str] = collections.Counter()
    for word in words:
        affixes.update(word[:n] for n in range(2, min(len(word), 7)))
        affixes.update("##" + word[-n:] for n in range(1, min(len(word), 6)))
    pieces = words | characters | {"##" + c for c in characters} | {a for a, n in affixes.items() if n >= 3}
    vocab = {token: i for i, token in enumerate([*special, *sorted(pieces - set(special))])}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=MAX_LENGTH)


def _new_model(kind: TestModelKind, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": _HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 2 * _HIDDEN,
        "num_labels": 1,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if kind is TestModelKind.XLM_ROBERTA:
        # Positions start after padding_idx (1), so 512 tokens need 514 positions, as in XLM-R.
        config = XLMRobertaConfig(
            **shape,
            max_position_embeddings=MAX_LENGTH + 2,
            type_vocab_size=1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return XLMRobertaForSequenceClassification(config)
    return BertForSequenceClassification(BertConfig(**shape, max_position_embeddings=MAX_LENGTH, type_vocab_size=2))


def _units(tokenizer: PreTrainedTokenizerBase, language: str, text: str) -> list[str]:
    """Words of a text; for Chinese (no spaces) the tokenizer's own pieces."""
    if language == "zh":
        pieces = (piece.lstrip("▁") for piece in tokenizer.tokenize(text))
    else:
        pieces = (word.strip(_PUNCTUATION) for word in text.split())
    return [piece for piece in pieces if piece]


def _topic_statistics(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Smoothed, centred p(topic | token) from the train split and the lexicon: [vocab, topics]."""
    import torch

    counts = torch.zeros(len(tokenizer), len(TOPICS), dtype=torch.float64)

    def add(text: str, topic: str, weight: float) -> None:
        for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
            counts[token_id, TOPICS.index(topic)] += weight

    for entry in corpus():
        if entry.split == "train":
            add(entry.text, entry.topic, 1.0)
    for (topic, language), words in lexicon().items():
        for word in words:
            add(word, topic, _LEXICON_WEIGHT)
        if language == "zh":  # inside a sentence a Chinese word has no "▁" in front
            add("".join(words), topic, _LEXICON_WEIGHT)
    p = (counts + _PRIOR) / (counts.sum(dim=1, keepdim=True) + _PRIOR * len(TOPICS))
    return (p - 1 / len(TOPICS)).float()


def _warm_start(model: PreTrainedModel, statistics: torch.Tensor, *, seed: int) -> None:
    """Write the topic statistics into the word embeddings along a fixed random orthonormal basis."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(_HIDDEN, len(TOPICS), generator=generator))[0].T  # [topics, hidden]
    with torch.no_grad():
        model.get_input_embeddings().weight += _WARM_START_SCALE * statistics @ basis


class _TrainingData:
    """Endless listwise groups (query, [positive, negative, ...]) from the train split and the lexicon."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, rng: random.Random) -> None:
        self.rng = rng
        keys = [(t, lang) for t in TOPICS for lang in LANGUAGES]
        self.queries = {k: _texts(topic=k[0], language=k[1], kind="query", split="train") for k in keys}
        self.passages = {k: _texts(topic=k[0], language=k[1], kind="passage", split="train") for k in keys}
        self.pools: dict[tuple[str, str], list[str]] = {}
        function_words: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for topic, language in keys:
            units = [
                u
                for text in self.queries[topic, language] + self.passages[topic, language]
                for u in _units(tokenizer, language, text)
            ]
            self.pools[topic, language] = 2 * list(lexicon()[topic, language]) + units
            function_words[language].update(set(units))
        # Words found in three topics or more: the glue that makes synthetic text look like text.
        self.function_words = {
            language: sorted(w for w, n in counter.items() if n >= 3) for language, counter in function_words.items()
        }

    def synthetic(self, topic: str, language: str, low: int, high: int) -> str:
        """Random words of one topic mixed with function words: cannot be memorised as a sentence."""
        rng = self.rng
        pool = self.pools[topic, language]
        words = rng.sample(pool, min(len(pool), rng.randint(max(1, low // 2), max(1, high // 2))))
        words += [rng.choice(self.function_words[language]) for _ in range(rng.randint(low // 2 + 1, high))]
        rng.shuffle(words)
        return ("" if language == "zh" else " ").join(words)

    def __iter__(self) -> Iterator[tuple[str, list[str]]]:
        rng = self.rng
        while True:
            topic, language = rng.choice(TOPICS), rng.choice(LANGUAGES)
            topics = [topic, *rng.sample([t for t in TOPICS if t != topic], _NEGATIVES_PER_GROUP)]
            if rng.random() < _CROSS_LINGUAL_SHARE:
                # Only the topic carries across languages: teaches the model to compare topics.
                other = rng.choice([lang for lang in LANGUAGES if lang != language])
                query = (
                    rng.choice(self.queries[topic, language])
                    if rng.random() < 0.5
                    else self.synthetic(topic, language, 2, 5)
                )
                if rng.random() < 0.5:
                    yield query, [rng.choice(self.passages[t, other]) for t in topics]
                else:
                    yield query, [self.synthetic(t, other, 6, 14) for t in topics]
            elif rng.random() < _SYNTHETIC_SHARE:
                query = (
                    self.synthetic(topic, language, 2, 6)
                    if rng.random() < 0.7
                    else rng.choice(self.queries[topic, language])
                )
                yield query, [self.synthetic(t, language, 6, 14) for t in topics]
            else:
                positive = rng.choice(self.passages[topic, language])
                query = (
                    rng.choice(self.queries[topic, language])
                    if rng.random() < 0.6
                    else rng.choice([p for p in self.passages[topic, language] if p != positive])
                )
                yield query, [positive, *(rng.choice(self.passages[t, language]) for t in topics[1:])]


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: _TrainingData,
    *,
    steps: int,
    say: Callable[[str], None],
) -> None:
    """Listwise softmax cross-entropy over (positive, negatives) groups, as rerankers are trained."""
    import torch

    if steps == 0:
        return
    groups = iter(data)
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(False)  # keep the warm start: unseen words keep their topic meaning
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=_LEARNING_RATE)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup + 1)))
    )
    width = 1 + _NEGATIVES_PER_GROUP
    target = torch.zeros(_GROUPS_PER_STEP, dtype=torch.long)  # the positive comes first in each group
    model.train()
    for step in range(1, steps + 1):
        batch = [next(groups) for _ in range(_GROUPS_PER_STEP)]
        inputs = tokenizer(
            [query for query, documents in batch for _ in documents],
            [document for _, documents in batch for document in documents],
            padding=True,
            truncation="only_second",
            max_length=_TRAIN_MAX_LENGTH,
            return_tensors="pt",
        )
        logits = model(**inputs).logits.view(_GROUPS_PER_STEP, width)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == steps:
            say(f"step {step}/{steps}: loss {loss.item():.3f} (chance {math.log(width):.3f})")
    embeddings.requires_grad_(True)


def _top1(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[RelevanceExample]
) -> tuple[int, int]:
    """How many examples rank their relevant document first (all pairs in one batch)."""
    import torch

    inputs = tokenizer(
        [example.query for example in examples for _ in example.documents],
        [document for example in examples for document in example.documents],
        padding=True,
        truncation="only_second",
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
    with torch.inference_mode():
        scores = model(**inputs).logits.view(-1).tolist()
    correct = 0
    for example in examples:
        mine, scores = scores[: len(example.documents)], scores[len(example.documents) :]
        correct += int(max(range(len(mine)), key=mine.__getitem__) == example.relevant_index)
    return correct, len(examples)
