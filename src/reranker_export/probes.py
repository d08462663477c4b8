"""The fixed probe set the export validates against: multilingual, short and long, some that truncate.

Each query is scored against every passage, so one run gives both per-pair logits (parity) and
per-query rankings (FP16 ranking agreement).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .settings import PairSemantics

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PROBE_QUERIES: tuple[str, ...] = (
    "how do vaccines train the immune system?",
    "Wie funktioniert ein Elektromotor?",
    "¿Cuál es la capital de Australia?",
    "什么是光合作用？",
    "Почему небо голубое?",
    "quelle est la meilleure saison pour visiter le Japon ?",
    # Longer than query_max_length for small max_length settings: exercises query truncation.
    " ".join(["what are the long-term effects of interest rate changes on housing markets and savings"] * 40),
)

_SHORT_PASSAGES: tuple[str, ...] = (
    "Vaccines expose the immune system to a harmless piece of a pathogen so it can build memory cells.",
    "Ein Elektromotor wandelt elektrische Energie über Magnetfelder in mechanische Bewegung um.",
    "Canberra es la capital de Australia, aunque Sídney es la ciudad más grande.",
    "光合作用是植物利用光能把二氧化碳和水转化为葡萄糖和氧气的过程。",
    "Небо кажется голубым из-за рассеяния Рэлея: короткие волны рассеиваются сильнее.",
    "Le printemps, avec les cerisiers en fleurs, et l'automne sont les saisons préférées au Japon.",
    "Central banks raise interest rates to cool inflation, which makes mortgages more expensive.",
    "The recipe needs two eggs, a cup of flour and a pinch of salt.",
    "",
)

# Passages well past 512 tokens in any tokenizer: they exercise ``only_second`` truncation.
_LONG_PASSAGES: tuple[str, ...] = (
    " ".join(
        [
            "The immune system learns from vaccines by producing antibodies and memory cells that recognise "
            "the antigen, so a later infection is met quickly and with force."
        ]
        * 40
    ),
    " ".join(["Die Energiewende verändert die Stromnetze, weil Wind und Sonne schwankend einspeisen."] * 60),
    " ".join(["東京と京都は観光客に人気があり、季節ごとに異なる景色が楽しめます。"] * 80),
)

PROBE_PASSAGES: tuple[str, ...] = _SHORT_PASSAGES + _LONG_PASSAGES


def probe_pairs() -> list[tuple[str, str]]:
    """Every (query, passage) combination, query-major."""
    return [(q, p) for q in PROBE_QUERIES for p in PROBE_PASSAGES]


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int,
    query_max_length: int,
    input_names: Sequence[str],
    pair_semantics: PairSemantics = PairSemantics.FLAG,
) -> dict[str, np.ndarray]:
    """Encode pairs with the semantics the model was trained with, using the tokenizer's own code.

    ``flag``, FlagReranker at the id level: query without special tokens cut to ``query_max_length``;
    passage without special tokens cut to ``max_length``; the tokenizer's own pair template, with
    ``only_second`` truncation to ``max_length``. ``longest_first``: the tokenizer encodes the pair
    with its ``longest_first`` truncation at ``max_length``, as sentence-transformers does.
    """
    backend = copy.deepcopy(tokenizer.backend_tokenizer)  # never mutate the caller's tokenizer
    backend.no_padding()
    backend.no_truncation()
    if pair_semantics is PairSemantics.LONGEST_FIRST:
        backend.enable_truncation(max_length, strategy="longest_first")
        rows = backend.encode_batch(list(pairs), add_special_tokens=True)
    else:
        queries = backend.encode_batch([q for q, _ in pairs], add_special_tokens=False)
        passages = backend.encode_batch([p for _, p in pairs], add_special_tokens=False)
        backend.enable_truncation(max_length, strategy="only_second")
        rows = []
        for query, passage in zip(queries, passages, strict=True):
            query.truncate(query_max_length)
            passage.truncate(max_length)
            rows.append(backend.post_process(query, passage, add_special_tokens=True))
    width = max(len(row.ids) for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    arrays = {
        "input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
        "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
        "token_type_ids": np.zeros((len(rows), width), dtype=np.int64),
    }
    for i, row in enumerate(rows):
        n = len(row.ids)
        arrays["input_ids"][i, :n] = row.ids
        arrays["attention_mask"][i, :n] = 1
        arrays["token_type_ids"][i, :n] = row.type_ids
    return {name: arrays[name] for name in input_names}
