"""``manifest.json``: what a model repository holds and how it was made."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from .settings import PairSemantics, ServingSettings

MANIFEST_FILENAME = "manifest.json"
_LIBRARIES = (
    "triton-reranker",
    "torch",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "onnxconverter-common",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(repository: Path) -> dict[str, str]:
    return {
        path.relative_to(repository).as_posix(): sha256_file(path)
        for path in sorted(repository.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILENAME and "__pycache__" not in path.parts
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def settings_dict(settings: ServingSettings) -> dict[str, Any]:
    data: dict[str, Any] = _plain(asdict(settings))
    tok = settings.tokenizer
    data["tokenizer"]["pair_semantics"] = tok.effective_pair_semantics.value
    data["tokenizer"]["query_max_length"] = (
        tok.effective_query_max_length if tok.effective_pair_semantics is PairSemantics.FLAG else None
    )
    data["tokenizer"]["length_buckets"] = list(settings.tokenizer.effective_length_buckets)
    return data


def write_manifest(repository: Path, content: dict[str, Any]) -> Path:
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **content,
        "libraries": library_versions(),
        "files": file_hashes(repository),
    }
    path = repository / MANIFEST_FILENAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def read_manifest(repository: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((repository / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    return data
