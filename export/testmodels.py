"""Tiny cross-encoders built offline in seconds, for tests, demos and CI.

The Hugging Face hub is out of reach where the tests run, so the test suite builds its own
models: a tokenizer trained on a small multilingual corpus written for the project
(``testdata/*.txt``: eight topics, six languages) and a 2-layer cross-encoder briefly trained to
score (query, passage) pairs of the same topic above pairs of different topics.

Two architectures, so the pipeline is shown to be model-agnostic:

- ``xlm-roberta``: ``XLMRobertaForSequenceClassification`` with a Unigram (sentencepiece-style)
  tokenizer, special tokens and pair format of bge-reranker-v2-m3 (``<s> q </s></s> p </s>``);
- ``bert``: ``BertForSequenceClassification`` with a WordPiece tokenizer, ``[CLS] q [SEP] p [SEP]``
  and ``token_type_ids``, like the ms-marco MiniLM cross-encoders.

Held-out examples (:func:`relevance_examples`) come from sentences the model never saw in
training, so a test can assert "the relevant document ranks first" end to end.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "LANGUAGES",
    "TOPICS",
    "CorpusEntry",
    "RelevanceExample",
    "TestModelKind",
    "build_test_model",
    "corpus",
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
TOPICS: tuple[str, ...] = (
    "weather",
    "cooking",
    "football",
    "space",
    "health",
    "trains",
    "computers",
    "gardening",
)
MAX_LENGTH = 512
"""``model_max_length`` of the saved tokenizers; the models have positions for it."""

_QUERY = "query"
_PASSAGE = "passage"
_TRAIN = "train"
_TEST = "test"


@dataclass(frozen=True, kw_only=True)
class CorpusEntry:
    """One sentence of the corpus: a short query or a passage on one topic, in one language."""

    topic: str
    language: str
    kind: str
    """``"query"`` or ``"passage"``."""
    split: str
    """``"train"`` (the models learn from it) or ``"test"`` (held out)."""
    text: str


@dataclass(frozen=True)
class RelevanceExample:
    """A held-out query with candidate documents, exactly one of them relevant."""

    query: str
    documents: tuple[str, ...]
    relevant_index: int


@functools.cache
def corpus() -> tuple[CorpusEntry, ...]:
    """Every sentence of the corpus, in file order (language, then topic)."""
    root = resources.files("reranker_export") / "testdata"
    entries: list[CorpusEntry] = []
    for language in LANGUAGES:
        name = f"{language}.txt"
        text = (root / name).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = [field.strip() for field in line.split(" | ", 3)]
            if (
                len(fields) != 4
                or fields[0] not in TOPICS
                or fields[1] not in (_QUERY, _PASSAGE)
                or fields[2] not in (_TRAIN, _TEST)
                or not fields[3]
            ):
                raise ValueError(f"testdata/{name}:{number}: expected 'topic | kind | split | text', got {line!r}")
            entries.append(
                CorpusEntry(topic=fields[0], language=language, kind=fields[1], split=fields[2], text=fields[3])
            )
    return tuple(entries)


def _select(
    *, topic: str | None = None, language: str | None = None, kind: str | None = None, split: str | None = None
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
    """Held-out ranking examples: a query, 5-8 documents in its language, one of them on its topic.

    Neither the queries nor the documents were used to train the test models. The distractors
    are held-out passages of other topics in the same language, so ranking needs the topic,
    not the language. The same seed gives the same examples.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    rng = random.Random(seed)
    combos = [
        (topic, language, query, positive)
        for topic in TOPICS
        for language in LANGUAGES
        for query in _select(topic=topic, language=language, kind=_QUERY, split=_TEST)
        for positive in _select(topic=topic, language=language, kind=_PASSAGE, split=_TEST)
    ]
    examples: list[RelevanceExample] = []
    while len(examples) < count:
        rng.shuffle(combos)  # more than len(combos) examples reuse queries with other distractors
        for topic, language, query, positive in combos[: count - len(examples)]:
            others = rng.sample([t for t in TOPICS if t != topic], rng.randint(4, 7))
            documents = [
                rng.choice(_select(topic=other, language=language, kind=_PASSAGE, split=_TEST)) for other in others
            ]
            relevant_index = rng.randint(0, len(documents))
            documents.insert(relevant_index, positive)
            examples.append(RelevanceExample(query=query, documents=tuple(documents), relevant_index=relevant_index))
    return examples


def long_document(words: int) -> str:
    """A long multilingual passage of exactly ``words`` whitespace-separated words.

    Passages of every topic and language, interleaved so that consecutive sentences change
    language. 400 words are well past 512 tokens in either test tokenizer (a Chinese sentence
    counts as one word but is dozens of tokens).
    """
    if words < 1:
        raise ValueError(f"words must be positive, got {words}")
    by_group = [
        _select(topic=topic, language=language, kind=_PASSAGE) for topic in TOPICS for language in LANGUAGES
    ]
    rows = max(len(group) for group in by_group)
    sentences = [group[i] for i in range(rows) for group in by_group if i < len(group)]
    tokens: list[str] = []
    while len(tokens) < words:
        for sentence in sentences:
            tokens.extend(sentence.split())
    return " ".join(tokens[:words])


def multilingual_probe_pairs() -> list[tuple[str, str]]:
    """Fixed (query, passage) probes: six languages, cross-lingual, short and long.

    Some passages are far past 512 tokens (they truncate), one query is past 384 tokens
    (FlagReranker's default ``query_max_length`` for ``max_length=512``) and some text has
    irregular whitespace and punctuation.
    """

    def first(topic: str, language: str, kind: str) -> str:
        return _select(topic=topic, language=language, kind=kind, split=_TEST)[0]

    return [
        (first("weather", "en", _QUERY), first("weather", "en", _PASSAGE)),
        (first("cooking", "de", _QUERY), first("cooking", "de", _PASSAGE)),
        (first("football", "fr", _QUERY), first("football", "fr", _PASSAGE)),
        (first("space", "es", _QUERY), first("space", "es", _PASSAGE)),
        (first("health", "zh", _QUERY), first("health", "zh", _PASSAGE)),
        (first("trains", "ru", _QUERY), first("trains", "ru", _PASSAGE)),
        (first("computers", "en", _QUERY), first("computers", "zh", _PASSAGE)),
        (first("gardening", "de", _QUERY), first("weather", "ru", _PASSAGE)),
        ("  weather\tforecast   for the WEEKEND?!  ", "Rain, wind (40 km/h) & snow... Temperature: -3 to 5."),
        (first("space", "en", _QUERY), long_document(700)),
        (first("trains", "ru", _QUERY), first("trains", "ru", _PASSAGE) + " " + long_document(900)),
        (long_document(450), first("cooking", "es", _PASSAGE)),
        (long_document(600), long_document(800)),
    ]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

_DEFAULT_TRAIN_STEPS = {TestModelKind.XLM_ROBERTA: 300, TestModelKind.BERT: 300}
_VOCAB_SIZE = 4000
_TRAIN_MAX_LENGTH = 128  # training pairs are short; keeps steps cheap
_GROUPS_PER_STEP = 16
_NEGATIVES_PER_GROUP = 7
_LEARNING_RATE = 2e-3


def build_test_model(
    output_dir: Path,
    *,
    kind: TestModelKind = TestModelKind.XLM_ROBERTA,
    seed: int = 0,
    train_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Train a tiny cross-encoder and its tokenizer; save both into ``output_dir``.

    ``output_dir`` then loads with ``AutoModelForSequenceClassification`` and ``AutoTokenizer``
    (fast tokenizer, ``model_max_length`` 512) and with FlagEmbedding's ``FlagReranker``.
    The same ``seed`` (and ``train_steps``) gives the same weights. Returns ``output_dir``.
    """
    import torch

    kind = TestModelKind(kind)
    steps = _DEFAULT_TRAIN_STEPS[kind] if train_steps is None else train_steps
    if steps < 0:
        raise ValueError(f"train_steps must be >= 0, got {steps}")
    say = progress or (lambda _line: None)
    output_dir = Path(output_dir)

    texts = [e.text for e in corpus()]
    say(f"training a {kind.value} tokenizer on {len(texts)} sentences in {len(LANGUAGES)} languages")
    tokenizer = _train_xlmr_tokenizer(texts) if kind is TestModelKind.XLM_ROBERTA else _train_bert_tokenizer(texts)

    with _deterministic_torch(seed):
        model = _new_model(kind, len(tokenizer), tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        say(f"training {type(model).__name__} ({n_params / 1e3:.0f}k parameters) for {steps} steps")
        _train(model, tokenizer, steps=steps, seed=seed, say=say)
        model.eval()
        with torch.inference_mode():
            correct = _held_out_top1(model, tokenizer)
    say(f"held-out top-1 accuracy: {correct}")

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    say(f"saved to {output_dir}")
    return output_dir


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch without disturbing the caller's RNG; one thread so results do not depend on the host."""
    import torch

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _tokenizers_single_threaded() -> Iterator[None]:
    # The Rust trainers sum floats in parallel; one thread makes the vocabulary reproducible.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _train_xlmr_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    # The same pre-tokenizer XLMRobertaTokenizerFast builds, so training matches inference.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=_VOCAB_SIZE, special_tokens=special, unk_token="<unk>", show_progress=False
    )
    with _tokenizers_single_threaded():
        backend.train_from_iterator(texts, trainer=trainer)
    vocab = [(piece, score) for piece, score in json.loads(backend.to_str())["model"]["vocab"]]
    if [piece for piece, _ in vocab[: len(special)]] != special:
        raise AssertionError(f"special tokens out of place: {vocab[: len(special)]}")
    # Built from the vocabulary by the transformers class itself, so the saved tokenizer.json and
    # AutoTokenizer agree exactly (transformers 5 rebuilds the pipeline from the class).
    return XLMRobertaTokenizerFast(vocab=vocab, model_max_length=MAX_LENGTH)


def _train_bert_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # As BertTokenizerFast(do_lower_case=True) builds it: lowercase, strip accents, split CJK chars.
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=_VOCAB_SIZE, special_tokens=special, show_progress=False)
    with _tokenizers_single_threaded():
        backend.train_from_iterator(texts, trainer=trainer)
    vocab = backend.get_vocab()
    if [vocab[token] for token in special] != list(range(len(special))):
        raise AssertionError(f"special tokens out of place: {[vocab[token] for token in special]}")
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=MAX_LENGTH)


def _new_model(kind: TestModelKind, vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    from transformers import BertConfig, BertForSequenceClassification, XLMRobertaConfig
    from transformers import XLMRobertaForSequenceClassification

    shape = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "num_labels": 1,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
    }
    if kind is TestModelKind.XLM_ROBERTA:
        # Positions start after padding_idx (1), so 512 tokens need 514 positions, as in XLM-R.
        config = XLMRobertaConfig(
            **shape,
            max_position_embeddings=MAX_LENGTH + 2,
            type_vocab_size=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return XLMRobertaForSequenceClassification(config)
    config = BertConfig(**shape, max_position_embeddings=MAX_LENGTH, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id)
    return BertForSequenceClassification(config)


def _training_groups(rng: random.Random) -> Iterator[tuple[str, list[str]]]:
    """Endless (query, [positive, negative, ...]) groups from the train split."""
    queries = {
        (t, lang): _select(topic=t, language=lang, kind=_QUERY, split=_TRAIN) for t in TOPICS for lang in LANGUAGES
    }
    passages = {
        (t, lang): _select(topic=t, language=lang, kind=_PASSAGE, split=_TRAIN)
        for t in TOPICS
        for lang in LANGUAGES
    }
    while True:
        topic, language = rng.choice(TOPICS), rng.choice(LANGUAGES)
        # Passages double as queries: more pairs to learn "same topic" from a small corpus.
        query = rng.choice(queries[topic, language] if rng.random() < 0.6 else passages[topic, language])
        positive = rng.choice([p for p in passages[topic, language] if p != query])
        negatives = [
            rng.choice(passages[other, language])
            for other in rng.sample([t for t in TOPICS if t != topic], _NEGATIVES_PER_GROUP)
        ]
        yield query, [positive, *negatives]


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    steps: int,
    seed: int,
    say: Callable[[str], None],
) -> None:
    """Listwise softmax cross-entropy over (positive, negatives) groups, as rerankers are trained."""
    import torch

    if steps == 0:
        return
    groups = _training_groups(random.Random(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / (steps - warmup + 1)))
    )
    width = 1 + _NEGATIVES_PER_GROUP
    target = torch.zeros(_GROUPS_PER_STEP, dtype=torch.long)  # the positive is first in each group
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
        if step % 50 == 0 or step == steps:
            say(f"step {step}/{steps}: loss {loss.item():.3f} (chance {math.log(width):.3f})")


def _held_out_top1(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    examples = relevance_examples(seed=1, count=len(TOPICS) * len(LANGUAGES) * 2)
    correct = 0
    for example in examples:
        inputs = tokenizer(
            [example.query] * len(example.documents),
            list(example.documents),
            padding=True,
            truncation="only_second",
            max_length=MAX_LENGTH,
            return_tensors="pt",
        )
        scores = model(**inputs).logits.view(-1)
        correct += int(scores.argmax().item() == example.relevant_index)
    return f"{correct}/{len(examples)} ({correct / len(examples):.0%})"
