"""Load a Hugging Face cross-encoder (model + fast tokenizer), failing fast with a fix in the message.

A hub id is checked with one bounded metadata call before any download, so an offline
machine, an unknown id or a gated repository fails in seconds instead of hanging on retries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

HUB_TIMEOUT_S = 10.0
_XLMR_LIKE = {"xlm-roberta", "roberta", "camembert"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, before any of its code or weights are loaded."""

    model_id: str
    revision: str | None
    """Resolved commit for hub models; None for local directories."""
    local_dir: Path
    """Directory the files are loaded from (the hub cache snapshot for hub ids)."""
    config: Mapping[str, Any]
    """``config.json`` as plain JSON: read without running any model code."""

    @property
    def remote_code(self) -> str | None:
        """The custom class ``auto_map`` names for sequence classification, if the model ships code."""
        auto_map = self.config.get("auto_map") or {}
        value = auto_map.get("AutoModelForSequenceClassification") or auto_map.get("AutoConfig")
        return str(value) if value else None

    @property
    def max_positions(self) -> int:
        """Longest pair the model can encode (XLM-R reserves padding_idx + 1 positions)."""
        positions = int(self.config.get("max_position_embeddings", 512))
        architectures = " ".join(self.config.get("architectures") or [])
        if self.config.get("model_type") in _XLMR_LIKE or "XLMRoberta" in architectures:
            positions -= int(self.config.get("pad_token_id", 1)) + 1
        return positions


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    source: ModelSource

    @property
    def model_id(self) -> str:
        return self.source.model_id

    @property
    def revision(self) -> str | None:
        return self.source.revision

    @property
    def input_names(self) -> tuple[str, ...]:
        return tokenizer_input_names(self.tokenizer)

    @property
    def max_positions(self) -> int:
        return self.source.max_positions


def tokenizer_input_names(tokenizer: PreTrainedTokenizerFast) -> tuple[str, ...]:
    """Inputs the model consumes, in ONNX order (token_type_ids only for BERT-like models)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return tuple(names)


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def _resolve_hub(model_id: str, revision: str | None, timeout_s: float, *, code: bool) -> tuple[Path, str]:
    """Check the hub id with one bounded call, then download the snapshot."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - transformers always brings it
        raise ModelLoadError('huggingface_hub is missing: pip install "triton-reranker[export]"') from exc
    try:
        info = HfApi().model_info(model_id, revision=revision, timeout=timeout_s)
    except GatedRepoError as exc:
        raise ModelLoadError(
            f"{model_id} is gated: accept its terms on the hub and set HF_TOKEN, or pass a local directory"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"no model {model_id!r} on the Hugging Face hub: check the id, or pass a local directory"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelLoadError(f"{model_id} has no revision {revision!r}: check --revision") from exc
    except Exception as exc:  # httpx/requests/OS errors alike: the hub is out of reach
        raise ModelLoadError(
            f"cannot reach the Hugging Face hub for {model_id} ({type(exc).__name__}); "
            "work offline by passing a local model directory (--model DIR), "
            "or a pre-filled HF cache with HF_HUB_OFFLINE=1"
        ) from exc
    commit = info.sha or revision or "main"
    try:
        path = snapshot_download(
            model_id,
            revision=commit,
            # Python files only when the user trusts the model's code.
            allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", *(["*.py"] if code else [])],
            etag_timeout=timeout_s,
        )
    except Exception as exc:  # the hub client raises many types; all mean "download failed"
        raise ModelLoadError(f"downloading {model_id}@{commit} failed: {exc}") from exc
    return Path(path), commit


def _cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # not in the cache (or cache unreadable): fall back to the hub
        return None


def resolve_model(
    model: str,
    *,
    revision: str | None = None,
    progress: Callable[[str], None] | None = None,
    hub_timeout_s: float = HUB_TIMEOUT_S,
    trust_remote_code: bool = False,
) -> ModelSource:
    """The model's files on this machine (hub id or local directory) and its ``config.json``.

    A hub id costs one metadata call bounded by ``hub_timeout_s`` before any download, so an
    unreachable hub fails in seconds with :class:`ModelLoadError` instead of hanging.
    """
    say = progress or (lambda _msg: None)
    revision_used: str | None = None
    if _looks_like_path(model):
        local_dir = Path(model).expanduser().resolve()
        if not local_dir.is_dir():
            raise ModelLoadError(f"model directory {local_dir} does not exist")
        if not (local_dir / "config.json").is_file():
            raise ModelLoadError(f"{local_dir} has no config.json: pass a Hugging Face model directory")
    else:
        import os

        cached = _cached_snapshot(model, revision)
        if cached is not None:
            local_dir, revision_used = cached, cached.name
        elif os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
            raise ModelLoadError(
                f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                "unset it, or pass a local model directory"
            )
        else:
            say(f"resolving {model} on the Hugging Face hub")
            local_dir, revision_used = _resolve_hub(model, revision, hub_timeout_s, code=trust_remote_code)
    try:
        config = json.loads((local_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the model config in {local_dir}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{local_dir / 'config.json'} is not a JSON object")
    return ModelSource(model_id=model, revision=revision_used, local_dir=local_dir, config=config)


def check_trust(source: ModelSource, trust_remote_code: bool) -> None:
    """``ModelLoadError`` when the model ships modeling code and running it was not allowed."""
    code = source.remote_code
    if code and not trust_remote_code:
        raise ModelLoadError(
            f"{source.model_id} ships its own modeling code ({code}, named by auto_map in config.json); "
            "read that code, then add --trust-remote-code to run it"
        )


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """The model's fast tokenizer; Triton's tokenizer step needs its ``tokenizer.json``."""
    from transformers import AutoTokenizer

    try:
        # An explicit bool: with None, transformers would ask on stdin whether to run a model's code.
        tokenizer = AutoTokenizer.from_pretrained(
            source.local_dir, local_files_only=True, use_fast=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {source.model_id}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"{source.model_id} has no fast (Rust) tokenizer (tokenizer.json); Triton's tokenizer step needs one"
        )
    return tokenizer  # type: ignore[return-value]  # a fast tokenizer: checked just above


def load_model(source: ModelSource, *, trust_remote_code: bool = False) -> PreTrainedModel:
    """The PyTorch cross-encoder (FP32, eval mode). Custom modeling code runs only when trusted."""
    check_trust(source, trust_remote_code)
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config: Any = AutoConfig.from_pretrained(
            source.local_dir, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {source.local_dir}: {exc}") from exc
    if config.num_labels != 1:
        raise ModelLoadError(
            f"{source.model_id} has {config.num_labels} output labels; a cross-encoder reranker has exactly one logit"
        )
    try:
        hf_model = AutoModelForSequenceClassification.from_pretrained(
            source.local_dir, local_files_only=True, dtype="float32", trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        raise ModelLoadError(
            f"{source.model_id} ({config.model_type}) is not a sequence-classification cross-encoder: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load the weights of {source.model_id}: {exc}") from exc
    hf_model.eval()
    return hf_model


def load_cross_encoder(
    model: str,
    *,
    revision: str | None = None,
    progress: Callable[[str], None] | None = None,
    hub_timeout_s: float = HUB_TIMEOUT_S,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``model`` (hub id or local directory) as a one-logit cross-encoder with a fast tokenizer."""
    say = progress or (lambda _msg: None)
    source = resolve_model(
        model, revision=revision, progress=say, hub_timeout_s=hub_timeout_s, trust_remote_code=trust_remote_code
    )
    say(f"loading {model} ({source.config.get('model_type', 'custom')}) and its tokenizer")
    hf_model = load_model(source, trust_remote_code=trust_remote_code)
    return LoadedModel(
        model=hf_model, tokenizer=load_tokenizer(source, trust_remote_code=trust_remote_code), source=source
    )
