"""Load a Hugging Face cross-encoder (model + fast tokenizer), failing fast with a fix in the message.

A hub id is checked with one bounded metadata call before any download, so an offline
machine, an unknown id or a gated repository fails in seconds instead of hanging on retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    model_id: str
    revision: str | None
    """Resolved commit for hub models; None for local directories."""
    local_dir: Path
    """Directory the files were loaded from (the hub cache snapshot for hub ids)."""

    @property
    def input_names(self) -> tuple[str, ...]:
        """Inputs the model consumes, in ONNX order (token_type_ids only for BERT-like models)."""
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in self.tokenizer.model_input_names:
            names.append("token_type_ids")
        return tuple(names)

    @property
    def max_positions(self) -> int:
        """Longest pair the model can encode (XLM-R reserves padding_idx + 1 positions)."""
        config = self.model.config
        positions = int(getattr(config, "max_position_embeddings", 512))
        if config.model_type in {"xlm-roberta", "roberta", "camembert"}:
            positions -= int(config.pad_token_id) + 1
        return positions


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def _resolve_hub(model_id: str, revision: str | None, timeout_s: float) -> tuple[Path, str]:
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
            allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"],
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


def load_cross_encoder(
    model: str,
    *,
    revision: str | None = None,
    progress: Callable[[str], None] | None = None,
    hub_timeout_s: float = HUB_TIMEOUT_S,
) -> LoadedModel:
    """Load ``model`` (hub id or local directory) as a one-logit cross-encoder with a fast tokenizer.

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
            local_dir, revision_used = _resolve_hub(model, revision, hub_timeout_s)

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    try:
        config: Any = AutoConfig.from_pretrained(local_dir, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {local_dir}: {exc}") from exc
    if config.num_labels != 1:
        raise ModelLoadError(
            f"{model} has {config.num_labels} output labels; a cross-encoder reranker has exactly one logit"
        )
    say(f"loading {model} ({config.model_type}) and its tokenizer")
    try:
        hf_model = AutoModelForSequenceClassification.from_pretrained(local_dir, local_files_only=True, dtype="float32")
    except ValueError as exc:
        raise ModelLoadError(
            f"{model} ({config.model_type}) is not a sequence-classification cross-encoder: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load the weights of {model}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(local_dir, local_files_only=True, use_fast=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {model}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"{model} has no fast (Rust) tokenizer (tokenizer.json); Triton's tokenizer step needs one"
        )
    hf_model.eval()
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,  # type: ignore[arg-type]  # a fast tokenizer: checked just above
        model_id=model,
        revision=revision_used,
        local_dir=local_dir,
    )
