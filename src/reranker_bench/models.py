"""The models the benchmarks serve: random-weight XLM-R cross-encoders, the tiny test model, their exports.

Building and exporting take minutes on a small machine, so :func:`build_bench_model` and
:func:`export_repository` (with ``reuse=True``) keep their output and reuse it while the
architecture, seed and serving settings stay the same.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reranker_common import Progress
from reranker_loadtest.workload import Workload, WorkloadSettings

from .errors import BenchmarkError

if TYPE_CHECKING:
    from reranker_export.settings import ServingSettings

# The tokenizer the benchmark model uses is trained on text from the workload's own word
# lists (a different seed than the measured requests), sized to cut words into ~1.2 pieces,
# the order of XLM-R's 250k-piece vocabulary on natural text.
BENCH_TOKENIZER_VOCAB = 2500
BENCH_TOKENIZER_SEED = 1

ARCHITECTURE_MARKER = "bench-architecture.json"
EXPORT_MARKER = "bench-export.json"


@dataclass(frozen=True, kw_only=True)
class Architecture:
    """XLMRobertaForSequenceClassification shape (one output logit)."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    max_positions: int = 514
    vocab_size: int | None = None
    """``None``: the tokenizer's size."""

    @classmethod
    def cpu_bench(cls) -> Architecture:
        """Small enough for a CPU run, large enough that compute dominates (6 layers, hidden 384)."""
        return cls(layers=6, hidden=384, heads=12, intermediate=1536)

    def config(self, tokenizer: Any) -> Any:
        """A one-logit ``XLMRobertaConfig`` of this shape around ``tokenizer``'s vocabulary and special ids."""
        from transformers import XLMRobertaConfig

        config = XLMRobertaConfig(
            vocab_size=self.vocab_size or len(tokenizer),
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.max_positions,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        config.num_labels = 1  # one relevance logit per pair
        return config

    @classmethod
    def from_config(cls, config: Any) -> Architecture:
        """The shape of a transformers ``XLMRobertaConfig``."""
        return cls(
            layers=int(config.num_hidden_layers),
            hidden=int(config.hidden_size),
            heads=int(config.num_attention_heads),
            intermediate=int(config.intermediate_size),
            max_positions=int(config.max_position_embeddings),
            vocab_size=int(config.vocab_size),
        )

    @classmethod
    def bge_reranker_v2_m3(cls) -> Architecture:
        """The full-size architecture of BAAI/bge-reranker-v2-m3 (~568M parameters)."""
        from reranker_export.testmodels import bge_reranker_v2_m3_config

        return cls.from_config(bge_reranker_v2_m3_config())


def train_bench_tokenizer(output_dir: Path, *, vocab_size: int = BENCH_TOKENIZER_VOCAB) -> Any:
    """An XLM-R style (Unigram, ``<s> q </s></s> p </s>``) tokenizer trained on workload text.

    Built like ``reranker_export.testmodels``'s tokenizer, on text from the workload's word
    lists, so the benchmark's passages cut into about as many tokens as XLM-R's would.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    texts = [
        d
        for r in Workload(
            WorkloadSettings(seed=BENCH_TOKENIZER_SEED, candidates=10, foreign_document_ratio=0)
        ).requests(120)
        for d in r.documents
    ]
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=special, unk_token="<unk>", show_progress=False
    )
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: a reproducible vocabulary
    try:
        backend.train_from_iterator(texts, trainer=trainer)
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    vocab = [(piece, score) for piece, score in json.loads(backend.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizerFast(vocab=vocab, model_max_length=512)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def build_bench_model(
    model_dir: Path, architecture: Architecture, *, seed: int = 0, progress: Progress = print
) -> Path:
    """Save a random-weight XLMRobertaForSequenceClassification and its tokenizer to ``model_dir``.

    Reused when ``model_dir`` already holds the same architecture and seed.
    """
    marker = model_dir / ARCHITECTURE_MARKER
    wanted = {**asdict(architecture), "seed": seed, "tokenizer_vocab": BENCH_TOKENIZER_VOCAB}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        progress(f"reusing the benchmark model in {model_dir}")
        return model_dir
    import torch
    from transformers import XLMRobertaForSequenceClassification

    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    progress("training the benchmark tokenizer on workload text")
    tokenizer = train_bench_tokenizer(model_dir)
    config = architecture.config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XLMRobertaForSequenceClassification(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    progress(
        f"built XLM-R {architecture.layers}x{architecture.hidden} with random weights "
        f"({n_params / 1e6:.1f}M parameters)"
    )
    model.save_pretrained(model_dir)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return model_dir


def prepare_test_model(model_dir: Path | None, work: Path, progress: Progress = print) -> Path:
    """``model_dir`` when given (it must hold a ``config.json``), else the tiny XLM-R test model in ``work``."""
    if model_dir is not None:
        if not (model_dir / "config.json").is_file():
            raise BenchmarkError(f"{model_dir} is not a model directory (no config.json)")
        return model_dir
    from reranker_export.testmodels import TestModelKind, build_test_model

    built = work / "model"
    if (built / "config.json").is_file():
        progress(f"reusing the test model in {built}")
        return built
    progress("building the tiny XLM-R test model (a minute or two on a small machine)")
    return build_test_model(built, kind=TestModelKind.XLM_ROBERTA, progress=progress)


def export_repository(
    model_dir: Path,
    repo_dir: Path,
    serving: ServingSettings,
    *,
    reuse: bool = False,
    progress: Progress = print,
) -> Path:
    """Export ``model_dir`` into ``repo_dir`` with the project's exporter and ``serving``'s settings.

    ``reuse``: keep ``repo_dir`` when it was exported from the same benchmark model (see
    :func:`build_bench_model`) with the same serving settings, defaults included.
    """
    from reranker_export.errors import ExportError
    from reranker_export.pipeline import ExportSettings, export_model

    marker = repo_dir / EXPORT_MARKER
    wanted: dict[str, Any] = {}
    if reuse:
        # Every serving setting (defaults included) is part of the key: a changed default re-exports.
        wanted = {
            "model": json.loads((model_dir / ARCHITECTURE_MARKER).read_text()),
            "serving": json.loads(json.dumps(asdict(serving), default=str)),
        }
        if marker.is_file() and json.loads(marker.read_text()) == wanted:
            progress(f"reusing the exported repository in {repo_dir}")
            return repo_dir
    try:
        export_model(
            ExportSettings(model=str(model_dir), output=repo_dir, serving=serving, force=True), progress=progress
        )
    except ExportError as exc:
        raise BenchmarkError(f"export of the benchmark model failed: {exc}") from exc
    if reuse:
        marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return repo_dir
