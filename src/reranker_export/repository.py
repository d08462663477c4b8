"""Render a Triton model repository for one profile from typed settings.

Configs are built as ``ModelConfig`` protobufs and written with ``text_format``; the python
models' code is copied from ``triton_models/``. Weights are optional: without them the render
is what ``model_repository/`` in git holds (configs and code only).

Layout::

    <repo>/reranker/config.pbtxt              ensemble: query, documents -> scores
    <repo>/reranker_tokenizer/1/model.py      python backend + tokenizer.json
    <repo>/reranker_model/...                 per profile (see ``_model_files``)
    <repo>/reranker_scores/1/model.py         window mode only: max over windows
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .errors import RepositoryError
from .settings import (
    CANARY_PRIORITY,
    CORE_MODEL_NAME,
    DEFAULT_PRIORITY,
    DOCUMENT_INDEX,
    DOCUMENTS,
    ENSEMBLE_NAME,
    LOGITS,
    QUERY,
    SCORES,
    SCORES_MODEL_NAME,
    TOKENIZER_MODEL_NAME,
    Overflow,
    PairSemantics,
    Profile,
    ServingSettings,
)
from .tensorrt import ENGINE_FILENAME, ONNX_SUBDIR, build_engine_script

CONFIG_FILENAME = "config.pbtxt"
ONNX_FILENAME = "model.onnx"
TOKENIZER_FILENAME = "tokenizer.json"
VERSION = "1"
KEEP_FILENAME = ".gitkeep"
STEPS_PACKAGE = "reranker_steps"


@dataclass(frozen=True, kw_only=True)
class ModelSignature:
    """What the exported model consumes, as the tokenizer step must produce it."""

    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    pad_token_id: int = 1  # XLM-R's <pad>; BERT uses 0


@dataclass(frozen=True, kw_only=True)
class ModelFiles:
    """Files an export produced, copied into the repository. ``None`` renders configs and code only."""

    onnx_path: Path
    """The graph ``reranker_model`` runs (FP16 for the GPU profiles unless FP32 was asked for)."""
    tokenizer_json: Path


def _input(name: str, dtype: mc.DataType.ValueType, dims: Sequence[int]) -> mc.ModelInput:
    return mc.ModelInput(name=name, data_type=dtype, dims=list(dims))


def _output(name: str, dtype: mc.DataType.ValueType, dims: Sequence[int]) -> mc.ModelOutput:
    return mc.ModelOutput(name=name, data_type=dtype, dims=list(dims))


def _params(values: dict[str, object]) -> dict[str, mc.ModelParameter]:
    return {key: mc.ModelParameter(string_value=str(value)) for key, value in values.items()}


def queue_policy(settings: ServingSettings) -> mc.ModelQueuePolicy:
    """Bounded queue, and REJECT past the timeout (which each request's own timeout can lower)."""
    return mc.ModelQueuePolicy(
        timeout_action=mc.ModelQueuePolicy.REJECT,
        default_timeout_microseconds=settings.queue.timeout_us,
        allow_timeout_override=True,
        max_queue_size=settings.queue.max_queue_size,
    )


def batching(settings: ServingSettings, *, max_queue_delay_us: int = 0) -> mc.ModelDynamicBatching:
    """The queue of a step: bounded, rejecting, and with a priority level for health checks.

    Requests come at ``DEFAULT_PRIORITY``; the canary asks for ``CANARY_PRIORITY`` and is served
    before them (Triton's ensemble passes a request's priority to every step), so a liveness
    probe measures health, not queue length. For a step that never batches
    (``max_batch_size: 0``) the block merges nothing: Triton's default scheduler queues without
    bound, and ``dynamic_batching`` is the one place a queue policy can be set.
    """
    return mc.ModelDynamicBatching(
        max_queue_delay_microseconds=max_queue_delay_us,
        default_queue_policy=queue_policy(settings),
        priority_levels=max(CANARY_PRIORITY, DEFAULT_PRIORITY),
        default_priority_level=DEFAULT_PRIORITY,
    )


def tokenizer_config(settings: ServingSettings, signature: ModelSignature) -> mc.ModelConfig:
    tok = settings.tokenizer
    flag = tok.effective_pair_semantics is PairSemantics.FLAG
    outputs = [_output(name, mc.TYPE_INT64, [-1, -1]) for name in signature.input_names]
    if tok.overflow is Overflow.WINDOW:
        outputs.append(_output(DOCUMENT_INDEX, mc.TYPE_INT32, [-1]))
    return mc.ModelConfig(
        name=TOKENIZER_MODEL_NAME,
        backend="python",
        max_batch_size=0,
        input=[
            _input(QUERY, mc.TYPE_STRING, [1]),
            _input(DOCUMENTS, mc.TYPE_STRING, [-1]),
        ],
        output=outputs,
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=settings.tokenizer_instances)],
        dynamic_batching=batching(settings),
        parameters=_params(
            {
                "tokenizer_file": TOKENIZER_FILENAME,
                "max_length": tok.max_length,
                "pair_semantics": tok.effective_pair_semantics.value,
                # longest_first cuts the query per pair; query_max_length is flag's alone
                "query_max_length": tok.effective_query_max_length if flag else "",
                "overflow": tok.overflow.value,
                "window_stride": tok.window_stride,
                "length_buckets": ",".join(str(b) for b in tok.effective_length_buckets),
                "max_documents": tok.max_documents,
                "max_rows": settings.max_batch_size,
                "max_query_bytes": tok.max_query_bytes,
                "max_document_bytes": tok.max_document_bytes,
                "max_request_bytes": tok.max_request_bytes,
                "model_inputs": ",".join(signature.input_names),
                "pad_token_id": signature.pad_token_id,
            }
        ),
    )


def model_config(settings: ServingSettings, signature: ModelSignature) -> mc.ModelConfig:
    """``reranker_model``: the only step that batches across requests."""
    config = mc.ModelConfig(
        name=CORE_MODEL_NAME,
        max_batch_size=settings.max_batch_size,
        input=[_input(name, mc.TYPE_INT64, [-1]) for name in signature.input_names],
        # [rows, 1] as every backend computes it; the ensemble reshapes it to `scores` [N].
        output=[mc.ModelOutput(name=LOGITS, data_type=mc.TYPE_FP32, dims=[1])],
        dynamic_batching=batching(settings, max_queue_delay_us=settings.max_queue_delay_us),
    )
    if settings.profile is Profile.TENSORRT:
        config.platform = "tensorrt_plan"
        config.default_model_filename = ENGINE_FILENAME
        config.instance_group.append(
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=settings.model_instances)
        )
    elif settings.profile is Profile.ONNXRUNTIME:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = ONNX_FILENAME
        config.instance_group.append(
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=settings.model_instances)
        )
    else:
        config.backend = "python"
        config.instance_group.append(
            mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=settings.model_instances)
        )
        for key, value in _params(
            {
                "model_file": ONNX_FILENAME,
                "intra_op_threads": settings.ort_intra_op_threads,
                "inter_op_threads": 1,
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "pad_token_id": signature.pad_token_id,
                "sub_batch_rows": settings.cpu_sub_batch_rows,
            }
        ).items():
            config.parameters[key].CopyFrom(value)
    return config


def scores_config(settings: ServingSettings) -> mc.ModelConfig:
    """Window mode: the score of a document is the maximum over its windows."""
    return mc.ModelConfig(
        name=SCORES_MODEL_NAME,
        backend="python",
        max_batch_size=0,
        input=[
            _input(LOGITS, mc.TYPE_FP32, [-1, 1]),
            _input(DOCUMENT_INDEX, mc.TYPE_INT32, [-1]),
        ],
        output=[_output(SCORES, mc.TYPE_FP32, [-1])],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
        dynamic_batching=batching(settings),
    )


def _step(model: str, inputs: Iterable[str], outputs: dict[str, str]) -> mc.ModelEnsembling.Step:
    return mc.ModelEnsembling.Step(
        model_name=model, model_version=-1, input_map={name: name for name in inputs}, output_map=outputs
    )


def ensemble_config(settings: ServingSettings, signature: ModelSignature) -> mc.ModelConfig:
    """The public contract: ``query`` BYTES [1], ``documents`` BYTES [N] -> ``scores`` FP32 [N]."""
    window = settings.tokenizer.overflow is Overflow.WINDOW
    tokenizer_outputs = {name: name for name in signature.input_names}
    if window:
        tokenizer_outputs[DOCUMENT_INDEX] = DOCUMENT_INDEX
    steps = [
        _step(TOKENIZER_MODEL_NAME, (QUERY, DOCUMENTS), tokenizer_outputs),
        _step(CORE_MODEL_NAME, signature.input_names, {LOGITS: LOGITS if window else SCORES}),
    ]
    if window:
        steps.append(_step(SCORES_MODEL_NAME, (LOGITS, DOCUMENT_INDEX), {SCORES: SCORES}))
    return mc.ModelConfig(
        name=ENSEMBLE_NAME,
        platform="ensemble",
        max_batch_size=0,
        input=[
            _input(QUERY, mc.TYPE_STRING, [1]),
            _input(DOCUMENTS, mc.TYPE_STRING, [-1]),
        ],
        output=[
            # Truncate mode maps the model's [rows, 1] logits straight to `scores`; Triton's core
            # applies this reshape, so the contract's [N] holds for every backend.
            mc.ModelOutput(name=SCORES, data_type=mc.TYPE_FP32, dims=[-1])
            if window
            else mc.ModelOutput(
                name=SCORES, data_type=mc.TYPE_FP32, dims=[-1], reshape=mc.ModelTensorReshape(shape=[-1, 1])
            )
        ],
        ensemble_scheduling=mc.ModelEnsembling(step=steps),
    )


def build_configs(settings: ServingSettings, signature: ModelSignature) -> dict[str, mc.ModelConfig]:
    """Every model of the repository by name, in load order."""
    configs = {
        TOKENIZER_MODEL_NAME: tokenizer_config(settings, signature),
        CORE_MODEL_NAME: model_config(settings, signature),
    }
    if settings.tokenizer.overflow is Overflow.WINDOW:
        configs[SCORES_MODEL_NAME] = scores_config(settings)
    configs[ENSEMBLE_NAME] = ensemble_config(settings, signature)
    return configs


def format_config(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def python_model_source(model_name: str) -> str:
    """The code of a python-backend step's adapter, shipped as package data."""
    return resources.files("reranker_export").joinpath("triton_models", model_name, "model.py").read_text("utf-8")


def steps_package_sources() -> dict[str, str]:
    """``reranker_steps``'s modules by file name: the logic every python step imports.

    Rendered beside each step's ``model.py`` so the repository needs nothing but tokenizers,
    numpy (and onnxruntime for the cpu model) in Triton's Python.
    """
    package = resources.files(STEPS_PACKAGE)
    return {
        entry.name: entry.read_text("utf-8")
        for entry in sorted(package.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".py")
    }


def _copy(source: Path, target: Path) -> None:
    if not source.is_file():
        raise RepositoryError(f"{source} does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _copy_onnx(source: Path, target: Path) -> None:
    """Copy a graph and, when it has one, its external-data sidecar (same relative name)."""
    _copy(source, target)
    sidecar = source.with_name(source.name + ".data")
    if sidecar.is_file():
        _copy(sidecar, target.with_name(target.name + ".data"))


def render_repository(
    output: Path,
    settings: ServingSettings,
    *,
    signature: ModelSignature | None = None,
    files: ModelFiles | None = None,
) -> Path:
    """Write the repository for ``settings.profile`` into ``output`` (created; existing configs replaced)."""
    signature = signature or ModelSignature()
    configs = build_configs(settings, signature)
    output.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        model_dir = output / name
        (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
        (model_dir / CONFIG_FILENAME).write_text(format_config(config), encoding="utf-8")
        if config.backend == "python":
            (model_dir / VERSION / "model.py").write_text(python_model_source(name), encoding="utf-8")
            steps_dir = model_dir / VERSION / STEPS_PACKAGE
            steps_dir.mkdir(exist_ok=True)
            for filename, source in steps_package_sources().items():
                (steps_dir / filename).write_text(source, encoding="utf-8")

    if settings.profile is Profile.TENSORRT:
        script = output / CORE_MODEL_NAME / "build_engine.sh"
        script.write_text(build_engine_script(settings, signature), encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    if files is not None:
        _copy(files.tokenizer_json, output / TOKENIZER_MODEL_NAME / VERSION / TOKENIZER_FILENAME)
        if settings.profile is Profile.TENSORRT:
            # The engine is built on the GPU node from this graph (build_engine.sh), never shipped.
            _copy_onnx(files.onnx_path, output / CORE_MODEL_NAME / ONNX_SUBDIR / ONNX_FILENAME)
        else:
            _copy_onnx(files.onnx_path, output / CORE_MODEL_NAME / VERSION / ONNX_FILENAME)

    # Triton needs a version directory per model even when it holds nothing yet (the ensemble,
    # or reranker_model before its engine is built); git keeps it only with a file in it.
    for name in configs:
        version_dir = output / name / VERSION
        if not any(version_dir.iterdir()):
            (version_dir / KEEP_FILENAME).write_text("", encoding="utf-8")
    return output
