"""The export job: HF cross-encoder -> validated ONNX (FP32, FP16) -> Triton model repository.

Or, with ``onnx=``, an existing ONNX export (bring your own) checked against the ensemble's
contract and, where the PyTorch model loads, against it.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import byo_onnx, fp16, int8, onnx_export, tensorrt_compat, validation
from .errors import ModelLoadError, RepositoryError
from .families import SemanticsChoice, choose_pair_semantics
from .loading import HUB_TIMEOUT_S, check_trust, load_model, load_tokenizer, resolve_model, tokenizer_input_names
from .manifest import MANIFEST_FILENAME, settings_dict, sha256_file, write_manifest
from .repository import ModelFiles, ModelSignature, render_repository
from .settings import DEFAULT_MODEL_ID, Precision, Profile, ServingSettings, TokenizerSettings
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
    trust_remote_code: bool = False
    """Run modeling code the model ships (``auto_map`` in its config.json, e.g. Jina v2)."""
    onnx: Path | None = None
    """Serve this existing ONNX export instead of exporting ``model``; ``model`` gives its tokenizer
    (and the PyTorch model its parity is checked against)."""
    skip_parity: bool = False
    """With ``onnx``: do not load the PyTorch model; the manifest records the parity as skipped."""
    int8_min_top5_overlap: float = validation.INT8_MIN_TOP5_OVERLAP
    int8_min_kendall_tau: float = validation.INT8_MIN_KENDALL_TAU
    agreement_file: Path | None = None
    """JSONL of ``{query, candidates}``: the INT8 gate also compares rankings on it."""

    def __post_init__(self) -> None:
        if self.skip_parity and self.onnx is None:
            raise ValueError("--skip-parity applies to --onnx only: an export from PyTorch is always checked")


@dataclass(frozen=True)
class ExportResult:
    repository: Path
    parity: validation.ParityReport | None
    """None when ``skip_parity`` was set."""
    fp16: validation.Fp16Report | None
    seconds: float
    manifest: dict[str, Any]
    int8: tuple[validation.Int8Report, ...] = ()
    """The INT8 gate's reports: the probe set, then the agreement file if one was given."""


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


def _onnx_source(onnx: Path | None) -> dict[str, str] | None:
    return None if onnx is None else {"file": str(onnx), "sha256": sha256_file(onnx)}


def export_model(settings: ExportSettings, *, progress: Progress | None = None) -> ExportResult:
    """Run the whole export; raises a subclass of ``ExportError`` on any failure."""
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    serving = settings.serving
    replace = _check_output(settings.output, settings.force)
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    agreement_groups = validation.read_agreement_file(settings.agreement_file) if settings.agreement_file else []

    source = resolve_model(
        settings.model,
        revision=settings.revision,
        progress=say,
        hub_timeout_s=settings.hub_timeout_s,
        trust_remote_code=settings.trust_remote_code,
    )
    tok = serving.tokenizer
    if tok.pair_semantics is None:
        choice = choose_pair_semantics(source)
    else:
        choice = SemanticsChoice(tok.pair_semantics, "set by --pair-semantics")
    # Raises ValueError (a usage error) for settings that do not hold with the chosen semantics.
    tok = dataclasses.replace(tok, pair_semantics=choice.semantics)
    serving = dataclasses.replace(serving, tokenizer=tok)
    say(f"pair semantics: {choice.semantics.value} ({choice.reason})")
    if tok.max_length > source.max_positions:
        raise RepositoryError(
            f"max_length {tok.max_length} exceeds the {source.max_positions} positions of {settings.model}"
        )
    if not settings.skip_parity:  # before the tokenizer, which may read the same config
        check_trust(source, settings.trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code=settings.trust_remote_code)
    model = None
    if not settings.skip_parity:
        say(f"loading {settings.model} ({source.config.get('model_type', 'custom code')})")
        try:
            model = load_model(source, trust_remote_code=settings.trust_remote_code)
        except ModelLoadError as exc:
            if settings.onnx is None:
                raise
            raise ModelLoadError(
                f"{exc}; checking --onnx needs the PyTorch model: fix that, or pass --skip-parity to serve "
                "the ONNX file unchecked against it (the manifest records that)"
            ) from exc
    signature = ModelSignature(
        input_names=tokenizer_input_names(tokenizer),
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
    )

    with tempfile.TemporaryDirectory(prefix=".export-", dir=settings.output.parent) as staging_name:
        staging = Path(staging_name)
        if settings.onnx is not None:
            say(f"checking {settings.onnx} against the ensemble's contract")
            input_names = byo_onnx.stage_onnx(settings.onnx, staging / "fp32" / "model.onnx")
            signature = dataclasses.replace(signature, input_names=input_names)
            fp32_path = staging / "fp32" / "model.onnx"
        else:
            assert model is not None  # loaded above: skip_parity needs onnx
            say("exporting to ONNX (FP32)")
            fp32_path = onnx_export.export_onnx(
                model, staging / "fp32" / "model.onnx", input_names=signature.input_names
            )
        inputs = validation.probe_inputs(
            tokenizer,
            max_length=tok.max_length,
            query_max_length=tok.effective_query_max_length,
            input_names=signature.input_names,
            pair_semantics=choice.semantics,
        )
        fp32_logits = validation.onnx_logits(fp32_path, inputs)
        parity = None
        if model is None:
            validation.check_finite(fp32_logits)
            say("FP32 parity against PyTorch skipped (--skip-parity): the graph runs and its logits are finite")
        else:
            say("validating ONNX Runtime against PyTorch on the probe set")
            reference = validation.torch_logits(model, inputs)
            parity = validation.check_parity(reference, fp32_logits, tolerance=settings.fp32_tolerance)
            say(f"FP32 parity: max |Δlogit| {parity.max_abs_diff:.2e} over {parity.pairs} pairs")
        tokenizer_json = staging / "tokenizer.json"
        tokenizer.backend_tokenizer.save(str(tokenizer_json))
        del model  # frees the PyTorch weights before the FP16 pass holds its own copy

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

        fusion: dict[str, Any] | None = None
        int8_reports: list[validation.Int8Report] = []
        if serving.graph_fusion or serving.model_precision is Precision.INT8:
            say("fusing the graph with onnxruntime's transformer optimizer")
            fused_path = staging / "fused" / "model.onnx"
            fused_ops = int8.fuse_graph(fp32_path, fused_path, config=source.config)
            fused_parity = validation.check_parity(
                fp32_logits,
                validation.onnx_logits(fused_path, inputs),
                tolerance=settings.fp32_tolerance,
                what="the fused graph differs from the exported FP32 graph",
            )
            fusion = {"fused_operators": fused_ops, "parity": fused_parity.as_dict()}
            say(f"fused {fused_ops or 'nothing'}; max |Δlogit| {fused_parity.max_abs_diff:.2e} against FP32")
            served_path = fused_path
            if serving.model_precision is Precision.INT8:
                say("quantizing the weight MatMuls to INT8 (dynamic; embeddings, LayerNorm and the head stay FP32)")
                int8_path = int8.quantize_int8(fused_path, staging / "int8" / "model.onnx")
                int8_reports.append(
                    validation.check_int8(
                        validation.per_probe_query(fp32_logits),
                        validation.per_probe_query(validation.onnx_logits(int8_path, inputs)),
                        min_top5_overlap=settings.int8_min_top5_overlap,
                        min_kendall_tau=settings.int8_min_kendall_tau,
                    )
                )
                if agreement_groups:
                    int8_reports.append(
                        _int8_on_file(settings, tokenizer, tok, signature, fp32_path, int8_path, agreement_groups)
                    )
                for report in int8_reports:
                    say(
                        f"INT8 on the {report.source}: top-5 overlap {report.top5_overlap:.3f}, "
                        f"Kendall tau {report.kendall_tau:.3f}, max |Δlogit| {report.max_abs_diff:.2e}"
                    )
                served_path = int8_path

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
        "model": {
            "id": settings.model,
            "revision": source.revision,
            "trust_remote_code": settings.trust_remote_code,
            "onnx": None
            if settings.onnx is None
            else {"file": str(settings.onnx), "sha256": sha256_file(settings.onnx)},
        },
        "profile": serving.profile.value,
        "precision": serving.model_precision.value,
        "inputs": list(signature.input_names),
        "pad_token_id": signature.pad_token_id,
        "pair_semantics": choice.as_dict(),
        "settings": settings_dict(serving),
        "validation": {
            "fp32": parity.as_dict()
            if parity is not None
            else {"skipped": True, "reason": "--skip-parity: the ONNX file was not compared with PyTorch"},
            "fp16": fp16_report.as_dict() if fp16_report else None,
            "fusion": fusion,
            "int8": [report.as_dict() for report in int8_reports] or None,
        },
    }
    if serving.profile is Profile.TENSORRT:
        content["engine_build_command"] = engine_build_command(serving, signature)
        content["validation"]["tensorrt_operators"] = {"checked_against": tensorrt_compat.TABLE_SOURCE, "passed": True}
    write_manifest(settings.output, content)
    seconds = time.perf_counter() - started
    say(f"done in {seconds:.1f} s")
    return ExportResult(
        repository=settings.output,
        parity=parity,
        fp16=fp16_report,
        seconds=seconds,
        manifest=content,
        int8=tuple(int8_reports),
    )


def _int8_on_file(
    settings: ExportSettings,
    tokenizer: Any,
    tok: TokenizerSettings,
    signature: ModelSignature,
    fp32_path: Path,
    int8_path: Path,
    groups: list[tuple[str, list[str]]],
) -> validation.Int8Report:
    """The INT8 gate on the user's own (query, candidates) groups, encoded as the server will encode them."""
    from .probes import encode_pairs

    pairs = [(query, candidate) for query, candidates in groups for candidate in candidates]
    inputs = encode_pairs(
        tokenizer,
        pairs,
        max_length=tok.max_length,
        query_max_length=tok.effective_query_max_length,
        input_names=signature.input_names,
        pair_semantics=tok.effective_pair_semantics,
    )
    bounds = np.cumsum([len(candidates) for _, candidates in groups])[:-1]
    return validation.check_int8(
        np.split(validation.onnx_logits(fp32_path, inputs), bounds),
        np.split(validation.onnx_logits(int8_path, inputs), bounds),
        source=str(settings.agreement_file),
        min_top5_overlap=settings.int8_min_top5_overlap,
        min_kendall_tau=settings.int8_min_kendall_tau,
    )
