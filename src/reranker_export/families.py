"""Which pair semantics a model was trained and evaluated with, read from its files (docs/families.md).

The rule, first match wins:

1. a hub id ``BAAI/bge-reranker*``: ``flag``, the authors' FlagEmbedding ``FlagReranker``;
2. a model saved by sentence-transformers (``config_sentence_transformers.json`` beside it, or a
   ``sentence_transformers`` entry in ``config.json``): ``longest_first``, ``CrossEncoder``'s;
3. a model that ships its own modeling code (``auto_map`` in ``config.json``, Jina Reranker v2):
   ``longest_first``, what such models' own ``compute_score`` does (``truncation=True``);
4. a plain ``XLMRobertaForSequenceClassification``: ``flag``, the BGE reranker family's layout;
5. anything else (BERT, MiniLM, ELECTRA, DeBERTa cross-encoders): ``longest_first``, the
   sentence-transformers ``CrossEncoder`` and TEI default.

``--pair-semantics`` on the export overrides the rule; the manifest records the choice and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from .loading import ModelSource
from .settings import PairSemantics

ST_CONFIG_FILENAME = "config_sentence_transformers.json"


@dataclass(frozen=True)
class SemanticsChoice:
    semantics: PairSemantics
    reason: str
    """Why, in words: recorded in the manifest and printed as progress."""

    def as_dict(self) -> dict[str, str]:
        return {"value": self.semantics.value, "chosen_by": self.reason}


def choose_pair_semantics(source: ModelSource) -> SemanticsChoice:
    """The pair semantics of the family ``source`` belongs to, by the rule in this module's docstring."""
    config = source.config
    architectures = list(config.get("architectures") or [])
    if source.model_id.lower().startswith("baai/bge-reranker"):
        return SemanticsChoice(PairSemantics.FLAG, "BGE reranker hub id: FlagEmbedding's FlagReranker")
    if (source.local_dir / ST_CONFIG_FILENAME).is_file() or "sentence_transformers" in config:
        return SemanticsChoice(PairSemantics.LONGEST_FIRST, "saved by sentence-transformers: CrossEncoder")
    if source.remote_code:
        return SemanticsChoice(
            PairSemantics.LONGEST_FIRST,
            f"ships its own modeling code ({source.remote_code}): its compute_score truncates longest_first",
        )
    if architectures == ["XLMRobertaForSequenceClassification"]:
        return SemanticsChoice(
            PairSemantics.FLAG, "XLMRobertaForSequenceClassification: the BGE reranker family, FlagReranker"
        )
    return SemanticsChoice(
        PairSemantics.LONGEST_FIRST,
        f"{'/'.join(architectures) or config.get('model_type', 'unknown')}: sentence-transformers CrossEncoder "
        "and TEI default",
    )
