"""Repository rendering: configs round-trip, tensor names agree along the ensemble, golden model_repository/."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from reranker_export.repository import (
    ModelSignature,
    build_configs,
    format_config,
    parse_config,
    render_repository,
)
from reranker_export.settings import (
    CORE_MODEL_NAME,
    ENSEMBLE_NAME,
    SCORES_MODEL_NAME,
    TOKENIZER_MODEL_NAME,
    Overflow,
    Profile,
    ServingSettings,
    TokenizerSettings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RERENDER = "rm -r model_repository && reranker-export render --output model_repository"
SIGNATURES = [
    ModelSignature(),
    ModelSignature(input_names=("input_ids", "attention_mask", "token_type_ids"), pad_token_id=0),
]
ALL_SETTINGS = [
    ServingSettings(profile=profile, tokenizer=TokenizerSettings(overflow=overflow))
    for profile in Profile
    for overflow in Overflow
]


def _id(settings: ServingSettings) -> str:
    return f"{settings.profile.value}-{settings.tokenizer.overflow.value}"


@pytest.mark.parametrize("settings", ALL_SETTINGS, ids=_id)
@pytest.mark.parametrize("signature", SIGNATURES, ids=["xlmr", "bert"])
def test_render_parse_equal(settings: ServingSettings, signature: ModelSignature, tmp_path: Path) -> None:
    render_repository(tmp_path, settings, signature=signature)
    configs = build_configs(settings, signature)
    for name, config in configs.items():
        text = (tmp_path / name / "config.pbtxt").read_text()
        assert parse_config(text) == config
        assert format_config(parse_config(text)) == text
        assert (tmp_path / name / "1").is_dir()


def _outputs(config: mc.ModelConfig) -> dict[str, tuple[int, list[int]]]:
    return {o.name: (o.data_type, list(o.dims)) for o in config.output}


def _inputs(config: mc.ModelConfig) -> dict[str, tuple[int, list[int]]]:
    return {i.name: (i.data_type, list(i.dims)) for i in config.input}


@pytest.mark.parametrize("settings", ALL_SETTINGS, ids=_id)
@pytest.mark.parametrize("signature", SIGNATURES, ids=["xlmr", "bert"])
def test_tensor_names_and_dtypes_agree_along_the_ensemble(settings: ServingSettings, signature: ModelSignature) -> None:
    configs = build_configs(settings, signature)
    ensemble = configs[ENSEMBLE_NAME]
    assert _inputs(ensemble) == {"query": (mc.TYPE_STRING, [1]), "documents": (mc.TYPE_STRING, [-1])}
    assert _outputs(ensemble) == {"scores": (mc.TYPE_FP32, [-1])}
    # Every step input is produced upstream (or is an ensemble input) with the same dtype.
    available = {name: dtype for name, (dtype, _) in _inputs(ensemble).items()}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        model_inputs = {i.name: i.data_type for i in model.input}
        assert set(step.input_map) == set(model_inputs)
        for model_input, tensor in step.input_map.items():
            assert available[tensor] == model_inputs[model_input], (step.model_name, model_input)
        model_outputs = {o.name: o.data_type for o in model.output}
        assert set(step.output_map) <= set(model_outputs)
        for model_output, tensor in step.output_map.items():
            available[tensor] = model_outputs[model_output]
    assert available["scores"] == mc.TYPE_FP32
    assert [s.model_name for s in ensemble.ensemble_scheduling.step][:2] == [
        TOKENIZER_MODEL_NAME,
        CORE_MODEL_NAME,
    ]
    assert (SCORES_MODEL_NAME in configs) == (settings.tokenizer.overflow is Overflow.WINDOW)


def test_model_config_per_profile() -> None:
    sig = ModelSignature()
    trt = build_configs(ServingSettings(profile=Profile.TENSORRT), sig)[CORE_MODEL_NAME]
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    assert trt.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    ort = build_configs(ServingSettings(profile=Profile.ONNXRUNTIME), sig)[CORE_MODEL_NAME]
    assert ort.platform == "onnxruntime_onnx" and ort.default_model_filename == "model.onnx"
    cpu = build_configs(ServingSettings(profile=Profile.CPU, max_queue_delay_us=250), sig)[CORE_MODEL_NAME]
    assert cpu.backend == "python" and cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cpu.dynamic_batching.max_queue_delay_microseconds == 250
    for config in (trt, ort, cpu):
        assert config.max_batch_size == 128 and config.HasField("dynamic_batching")


def test_tokenizer_parameters_come_from_settings() -> None:
    settings = ServingSettings(
        tokenizer=TokenizerSettings(max_length=256, length_buckets=(32, 128, 1024), max_documents=20),
        max_batch_size=40,
    )
    params = {
        k: v.string_value for k, v in build_configs(settings, ModelSignature())[TOKENIZER_MODEL_NAME].parameters.items()
    }
    assert params["max_length"] == "256"
    assert params["query_max_length"] == "192"  # max_length * 3 // 4, as FlagReranker
    assert params["length_buckets"] == "32,128,256"  # capped and closed at max_length
    assert params["max_documents"] == "20" and params["max_rows"] == "40"
    assert params["overflow"] == "truncate"


def test_golden_model_repository_matches_the_generator(tmp_path: Path) -> None:
    """model_repository/ in git is exactly the rendered default profile (configs and code, no weights)."""
    render_repository(tmp_path, ServingSettings())
    golden = REPO_ROOT / "model_repository"
    rendered_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    golden_files = sorted(
        p.relative_to(golden) for p in golden.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert rendered_files == golden_files, f"re-render: {RERENDER}"
    mismatched = [str(p) for p in rendered_files if not filecmp.cmp(tmp_path / p, golden / p, shallow=False)]
    assert not mismatched, f"stale files {mismatched}: re-render: {RERENDER}"
