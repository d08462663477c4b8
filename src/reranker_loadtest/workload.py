"""Repeatable, multilingual rerank requests modelled on RAG traffic.

A request is one query and ``candidates`` passages, as a retriever hands them to the
reranker. Text is generated offline from the word lists in ``data/`` (one file per
language), with lengths drawn from configurable distributions: by default queries of
8-32 words and passages of 100-300 words, the size of typical RAG chunks. Request ``i``
of a workload is a pure function of ``(seed, i)``, so two runs, or two systems under
comparison, see exactly the same text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources

import numpy as np

from .errors import WorkloadError

DEFAULT_SEED = 20240917
DEFAULT_CANDIDATES = 50
DEFAULT_QUERY_WORDS = "uniform:8-32"
DEFAULT_DOCUMENT_WORDS = "normal:100-300"

# Scripts written without spaces between words; their sentences end with "。".
_UNSPACED_LANGUAGES = frozenset({"zh", "ja"})


class Distribution(str, Enum):
    """Shape of a length distribution (in words)."""

    UNIFORM = "uniform"
    NORMAL = "normal"  # mean at the middle of [low, high], sd = (high - low) / 4, clipped to the range


@dataclass(frozen=True, kw_only=True)
class LengthDistribution:
    """Word counts in ``[low, high]``; ``parse("normal:100-300")`` builds one from a string."""

    kind: Distribution = Distribution.UNIFORM
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise WorkloadError(f"length range must satisfy 1 <= low <= high, got {self.low}-{self.high}")

    @classmethod
    def parse(cls, text: str) -> LengthDistribution:
        """Parse ``KIND:LOW-HIGH`` (KIND uniform or normal), ``LOW-HIGH`` (uniform) or ``N`` (fixed)."""
        match = re.fullmatch(r"\s*(?:(\w+)\s*:)?\s*(\d+)\s*(?:-\s*(\d+))?\s*", text)
        if match is None:
            raise WorkloadError(f"cannot parse length distribution {text!r}; expected e.g. 'normal:100-300'")
        kind_text, low_text, high_text = match.groups()
        try:
            kind = Distribution(kind_text.lower()) if kind_text else Distribution.UNIFORM
        except ValueError:
            choices = ", ".join(d.value for d in Distribution)
            raise WorkloadError(f"unknown distribution {kind_text!r} in {text!r}; choose one of {choices}") from None
        low = int(low_text)
        return cls(kind=kind, low=low, high=int(high_text) if high_text else low)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` word counts drawn from the distribution."""
        if self.kind is Distribution.UNIFORM or self.low == self.high:
            return rng.integers(self.low, self.high + 1, size=size)
        mean = (self.low + self.high) / 2
        sd = (self.high - self.low) / 4
        return np.clip(np.rint(rng.normal(mean, sd, size=size)), self.low, self.high).astype(np.int64)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.low}-{self.high}"


def available_languages() -> tuple[str, ...]:
    """Languages with a word list under ``data/`` (ISO 639-1 codes)."""
    files = resources.files("reranker_loadtest").joinpath("data").iterdir()
    return tuple(sorted(f.name.removesuffix(".txt") for f in files if f.name.endswith(".txt")))


@functools.cache
def word_list(language: str) -> tuple[str, ...]:
    """The words of one language, in file order."""
    if language not in available_languages():
        raise WorkloadError(f"no word list for language {language!r}; available: {', '.join(available_languages())}")
    text = resources.files("reranker_loadtest").joinpath("data", f"{language}.txt").read_text("utf-8")
    words = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not words:
        raise WorkloadError(f"word list for {language!r} is empty")
    return words


@dataclass(frozen=True, kw_only=True)
class WorkloadSettings:
    """What each generated request looks like."""

    candidates: int = DEFAULT_CANDIDATES
    query_words: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(kind=Distribution.UNIFORM, low=8, high=32)
    )
    document_words: LengthDistribution = field(
        default_factory=lambda: LengthDistribution(kind=Distribution.NORMAL, low=100, high=300)
    )
    languages: tuple[str, ...] | None = None
    """Languages a request is written in (one per request, chosen uniformly); ``None`` means all."""
    foreign_document_ratio: float = 0.1
    """Share of passages written in another language than their query, as multilingual corpora have."""
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise WorkloadError(f"candidates must be positive, got {self.candidates}")
        if not 0.0 <= self.foreign_document_ratio <= 1.0:
            raise WorkloadError(f"foreign_document_ratio must be in [0, 1], got {self.foreign_document_ratio}")
        if self.languages is not None:
            if not self.languages:
                raise WorkloadError("languages must not be empty")
            for language in self.languages:
                word_list(language)  # raises on an unknown language

    @property
    def effective_languages(self) -> tuple[str, ...]:
        return self.languages if self.languages is not None else available_languages()

    def describe(self) -> Mapping[str, object]:
        """Plain values for reports."""
        return {
            "candidates": self.candidates,
            "query_words": str(self.query_words),
            "document_words": str(self.document_words),
            "languages": list(self.effective_languages),
            "foreign_document_ratio": self.foreign_document_ratio,
            "seed": self.seed,
        }


@dataclass(frozen=True, kw_only=True)
class RerankRequest:
    """One generated request."""

    index: int
    language: str
    query: str
    documents: tuple[str, ...]

    @property
    def payload_bytes(self) -> int:
        return len(self.query.encode()) + sum(len(d.encode()) for d in self.documents)


class Workload:
    """Deterministic request generator: ``request(i)`` depends only on the settings and ``i``."""

    def __init__(self, settings: WorkloadSettings | None = None) -> None:
        self.settings = settings if settings is not None else WorkloadSettings()
        self._languages = self.settings.effective_languages
        self._words = {lang: np.array(word_list(lang), dtype=object) for lang in self._languages}

    def request(self, index: int) -> RerankRequest:
        if index < 0:
            raise WorkloadError(f"request index must be >= 0, got {index}")
        s = self.settings
        rng = np.random.default_rng([s.seed, index])
        language = self._languages[int(rng.integers(len(self._languages)))]
        query = self._text(rng, language, int(s.query_words.sample(rng, 1)[0]), sentence=False)
        lengths = s.document_words.sample(rng, s.candidates)
        foreign = rng.random(s.candidates) < s.foreign_document_ratio
        documents = []
        for length, is_foreign in zip(lengths, foreign, strict=True):
            doc_language = language
            if is_foreign and len(self._languages) > 1:
                others = [lang for lang in self._languages if lang != language]
                doc_language = others[int(rng.integers(len(others)))]
            documents.append(self._text(rng, doc_language, int(length), sentence=True))
        return RerankRequest(index=index, language=language, query=query, documents=tuple(documents))

    def requests(self, count: int, *, start: int = 0) -> list[RerankRequest]:
        return [self.request(i) for i in range(start, start + count)]

    def __iter__(self) -> Iterator[RerankRequest]:
        index = 0
        while True:
            yield self.request(index)
            index += 1

    def _text(self, rng: np.random.Generator, language: str, n_words: int, *, sentence: bool) -> str:
        """``n_words`` words; passages are cut into sentences of 6-20 words with punctuation."""
        words = list(rng.choice(self._words[language], size=n_words))
        unspaced = language in _UNSPACED_LANGUAGES
        joiner = "" if unspaced else " "
        stop = "。" if unspaced else "."
        if not sentence:
            text = joiner.join(words)
            return text if unspaced else text + "?"
        sentences = []
        start = 0
        while start < n_words:
            end = min(n_words, start + int(rng.integers(6, 21)))
            chunk = joiner.join(words[start:end])
            sentences.append((chunk if unspaced else chunk[:1].upper() + chunk[1:]) + stop)
            start = end
        return joiner.join(sentences)
