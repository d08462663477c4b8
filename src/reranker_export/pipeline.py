"""The export job: HF cross-encoder -> validated ONNX (FP32, FP16) -> Triton model repository."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fp16, onnx_export, tensorrt_compat, validation
from .errors import RepositoryError
from .loading import HUB_TIMEOUT_S, load_cross_encoder
from .manifest import MANIFEST_FILENAME, settings_dict, write_manifest
from .repository import ModelFiles, ModelSignature, render_repository
from .settings import DEFAULT_MODEL_ID, Precision, Profile, ServingSettings
from .tensorrt import engine_build_command

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    model: str = DEFAULT_MODEL_ID
    """Hub id or local directory of a one-logit cross-encoder."""
    revision: str | None = None
    output: Path
    serving: ServingSettings = field(default_factory=ServingSettings)
    fp32_tolerance: float = validation.FP32_TOLERANCE
    fp16_tolerance: float = validation.FP16_TOLERANCE
    force: bool = False
    """Replace the contents of a non-empty output directory."""
    hub_timeout_s: float = HUB_TIMEOUT_S
    """Bound on each call to the Hugging Face hub (a hub id only): past it the export fails."""


@dataclass(frozen=True)
class ExportResult:
    repository: Path
    parity: validation.ParityReport
    fp16: validation.Fp16Report | None
    seconds: float
    manifest: dict[str, Any]


def _check_output(output: Path, force: bool) -> bool:
    """True when ``output`` holds an earlier repository to replace. Checked before any work starts."""
    if output.exists() and not output.is_dir():
        raise RepositoryError(f"{output} exists and is not a directory")
    if not output.is_dir() or not any(output.iterdir()):
        return False
    if not force:
        raise RepositoryError(f"{output} is not empty: choose a new --output, or pass --force to replace it")
    if not (output / MANIFEST_FILENAME).is_file() and not (output / "reranker").is_dir():
        raise RepositoryError(f"{output} does not look like a model repository; refusing to replace it")
    return True


def export_model(settings: ExportSettings, *, progress: Progress | None = None) -> ExportResult:
    """Run the whole export; raises a subclass of ``ExportError`` on any failure."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    serving = settings.serving
    replace = _check_output(settings.output, settings.force)
    settings.output.parent.mkdir(parents=True, exist_ok=True)

    loaded = load_cross_encoder(
        settings.model, revision=settings.revision, progress=say, hub_timeout_s=settings.hub_timeout_s
    )
    tok = serving.tokenizer
    if tok.max_length > loaded.max_positions:
        raise RepositoryError(
            f"max_length {tok.max_length} exceeds the {loaded.max_positions} positions of {settings.model}"
        )
    signature = ModelSignature(
        input_names=loaded.input_names,
        pad_token_id=int(loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0),
    )
    inputs = validation.probe_inputs(
        loaded.tokenizer,
        max_length=tok.max_length,
        query_max_length=tok.effective_query_max_length,
        input_names=signature.input_names,
    )

    with tempfile.TemporaryDirectory(prefix=".export-", dir=settings.output.parent) as staging_name:
        staging = Path(staging_name)
        say("exporting to ONNX (FP32)")
        fp32_path = onnx_export.export_onnx(
            loaded.model, staging / "fp32" / "model.onnx", input_names=signature.input_names
        )
        say("validating ONNX Runtime against PyTorch on the probe set")
        reference = validation.torch_logits(loaded.model, inputs)
        fp32_logits = validation.onnx_logits(fp32_path, inputs)
        parity = validation.check_parity(reference, fp32_logits, tolerance=settings.fp32_tolerance)
        say(f"FP32 parity: max |Δlogit| {parity.max_abs_diff:.2e} over {parity.pairs} pairs")
        tokenizer_json = staging / "tokenizer.json"
        loaded.tokenizer.backend_tokenizer.save(str(tokenizer_json))
        revision = loaded.revision
        del loaded  # frees the PyTorch weights before the FP16 pass holds its own copy

        served_path = fp32_path
        fp16_report = None
        if serving.model_precision is Precision.FP16:
            say("converting to FP16 (LayerNormalization, Softmax and other overflow-prone ops stay FP32)")
            fp16_path = fp16.convert_to_fp16(fp32_path, staging / "fp16" / "model.onnx")
            fp16_report = validation.check_fp16(
                fp32_logits, validation.onnx_logits(fp16_path, inputs), tolerance=settings.fp16_tolerance
            )
            say(
                f"FP16: max |Δlogit| {fp16_report.max_abs_diff:.2e}, top-5 overlap {fp16_report.top5_overlap:.2f}, "
                f"Kendall tau {fp16_report.kendall_tau:.3f}"
            )
            served_path = fp16_path

        if serving.profile is Profile.TENSORRT:
            say(f"checking the graph against TensorRT's ONNX operator support ({tensorrt_compat.TABLE_SOURCE})")
            tensorrt_compat.check_tensorrt_compatible(served_path)

        say(f"rendering the {serving.profile.value} model repository in {settings.output}")
        if replace:  # only now that everything validated: a failed export leaves the old one intact
            shutil.rmtree(settings.output)
        render_repository(
            settings.output,
            serving,
            signature=signature,
            files=ModelFiles(onnx_path=served_path, tokenizer_json=tokenizer_json),
        )

    content: dict[str, Any] = {
        "model": {"id": settings.model, "revision": revision},
        "profile": serving.profile.value,
        "precision": serving.model_precision.value,
        "inputs": list(signature.input_names),
        "pad_token_id": signature.pad_token_id,
        "settings": settings_dict(serving),
        "validation": {
            "fp32": parity.as_dict(),
            "fp16": fp16_report.as_dict() if fp16_report else None,
        },
    }
    if serving.profile is Profile.TENSORRT:
        content["engine_build_command"] = engine_build_command(serving, signature)
        content["validation"]["tensorrt_operators"] = {"checked_against": tensorrt_compat.TABLE_SOURCE, "passed": True}
    write_manifest(settings.output, content)
    seconds = time.perf_counter() - started
    say(f"done in {seconds:.1f} s")
    return ExportResult(repository=settings.output, parity=parity, fp16=fp16_report, seconds=seconds, manifest=content)
