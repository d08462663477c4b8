"""Export pipeline: ONNX parity, FP16, failures as named errors, the CLI, the full-size architecture."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from reranker_export import cli, tensorrt_compat
from reranker_export.errors import (
    Fp16ToleranceError,
    ModelLoadError,
    ParityError,
    RepositoryError,
    TensorRTCompatibilityError,
)
from reranker_export.manifest import read_manifest, sha256_file
from reranker_export.pipeline import ExportSettings, export_model
from reranker_export.settings import Profile
from reranker_export.tensorrt_compat import TENSORRT_SAFE_TAG, find_incompatibilities
from support import serving_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "reranker_export.cli"]


def _export(model_dir: Path, output: Path, profile: Profile, **overrides: object) -> dict:
    result = export_model(
        ExportSettings(model=str(model_dir), output=output, serving=serving_settings(profile, **overrides))
    )
    return result.manifest


@pytest.fixture(scope="module", params=["xlmr", "bert"])
def tensorrt_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict]:
    """(kind, repository, manifest) of each test model exported for the tensorrt profile, once."""
    kind: str = request.param
    repository = tmp_path_factory.mktemp(f"tensorrt-{kind}") / "repo"
    return kind, repository, _export(request.getfixturevalue(f"{kind}_model_dir"), repository, Profile.TENSORRT)


def test_export_fp32_and_fp16_parity(tensorrt_export: tuple[str, Path, dict]) -> None:
    kind, repository, manifest = tensorrt_export

    fp32 = manifest["validation"]["fp32"]
    assert fp32["max_abs_diff"] <= 1e-4
    assert fp32["pairs"] >= 50
    fp16 = manifest["validation"]["fp16"]
    assert fp16["max_abs_diff"] <= 5e-2
    assert fp16["top5_overlap"] >= 0.8
    assert fp16["kendall_tau"] >= 0.8

    model = onnx.load(str(repository / "reranker_model/onnx/model.onnx"))
    graph = model.graph
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "bert" else [])
    assert [i.name for i in graph.input] == expected_inputs
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    (logits,) = graph.output
    assert logits.name == "logits" and logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Dynamic batch and sequence axes, one logit per pair.
    batch_axis, sequence_axis = graph.input[0].type.tensor_type.shape.dim
    assert batch_axis.dim_param and sequence_axis.dim_param
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1
    assert max(o.version for o in model.opset_import if o.domain in {"", "ai.onnx"}) >= 17
    ops = {node.op_type for node in graph.node}
    assert "LayerNormalization" in ops
    # The FP16 graph keeps LayerNormalization in FP32: its weights are FP32 initializers.
    init_types = {init.name: init.data_type for init in graph.initializer}
    ln_weights = [n.input[1] for n in graph.node if n.op_type == "LayerNormalization"]
    assert ln_weights and all(init_types.get(w, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for w in ln_weights)
    assert onnx.TensorProto.FLOAT16 in set(init_types.values())
    # What trtexec gets on the GPU node passes TensorRT's operator table, checked at export.
    assert find_incompatibilities(model) == []
    assert manifest["validation"]["tensorrt_operators"]["passed"] is True
    if kind == "xlmr":  # position ids: an integer CumSum, computed in FP32 between two Casts
        (cumsum,) = [n for n in graph.node if n.op_type == "CumSum"]
        assert TENSORRT_SAFE_TAG in cumsum.name


def test_tensorrt_export_refuses_a_graph_tensorrt_would_reject(
    xlmr_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the CumSum rewrite the XLM-R graph keeps an INT64 CumSum: the export must fail, not
    # leave the failure to trtexec on the GPU node.
    monkeypatch.setattr(tensorrt_compat, "make_tensorrt_safe", lambda model: 0)
    with pytest.raises(TensorRTCompatibilityError, match=r"CumSum.*INT64"):
        _export(xlmr_model_dir, tmp_path / "repo", Profile.TENSORRT)
    assert not (tmp_path / "repo").exists()


def test_manifest_records_model_hashes_settings_and_versions(cpu_repository: Path) -> None:
    manifest = read_manifest(cpu_repository)
    assert manifest["profile"] == "cpu" and manifest["precision"] == "fp32"
    assert manifest["settings"]["tokenizer"]["max_length"] == 128
    assert {"torch", "transformers", "onnx", "onnxruntime", "tokenizers"} <= set(manifest["libraries"])
    files = manifest["files"]
    assert "reranker_model/1/model.onnx" in files and "reranker_tokenizer/1/tokenizer.json" in files
    for rel, digest in files.items():
        assert sha256_file(cpu_repository / rel) == digest
    assert manifest["validation"]["fp32"]["max_abs_diff"] <= 1e-4


def test_tensorrt_manifest_has_engine_command(tensorrt_export: tuple[str, Path, dict]) -> None:
    kind, repository, manifest = tensorrt_export
    command = manifest["engine_build_command"]
    assert command[0] == "trtexec" and "--stronglyTyped" in command
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "bert" else [])
    assert "--maxShapes=" + ",".join(f"{name}:64x128" for name in inputs) in command
    script = (repository / "reranker_model/build_engine.sh").read_text()
    assert "trtexec" in script and "--stronglyTyped" in script
    assert os.access(repository / "reranker_model/build_engine.sh", os.X_OK)


def _perturbing_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the exported graph wrong on purpose: scale one weight matrix after export."""
    from reranker_export import onnx_export, pipeline

    real_export = onnx_export.export_onnx

    def export_then_perturb(*args: object, **kwargs: object) -> Path:
        path = real_export(*args, **kwargs)  # type: ignore[arg-type]
        graph = onnx.load(str(path))
        biggest = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = onnx.numpy_helper.to_array(biggest) * 1.5
        biggest.CopyFrom(onnx.numpy_helper.from_array(values.astype(values.dtype), biggest.name))
        onnx.save(graph, str(path))
        return path

    monkeypatch.setattr(pipeline.onnx_export, "export_onnx", export_then_perturb)


def test_perturbed_graph_fails_with_parity_error(
    xlmr_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _perturbing_export(monkeypatch)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        _export(xlmr_model_dir, tmp_path / "repo", Profile.CPU)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_perturbed_graph_makes_cli_exit_non_zero(
    xlmr_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _perturbing_export(monkeypatch)
    code = cli.main(
        [
            "--model",
            str(xlmr_model_dir),
            "--profile",
            "cpu",
            "--output",
            str(tmp_path / "r"),
            "--max-length",
            "128",
            "--length-buckets",
            "32,64",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("reranker-export: error: ParityError:")
    assert "Traceback" not in "\n".join(err)


def test_impossible_fp16_tolerance_fails(xlmr_model_dir: Path, tmp_path: Path) -> None:
    settings = ExportSettings(
        model=str(xlmr_model_dir),
        output=tmp_path / "repo",
        serving=serving_settings(Profile.ONNXRUNTIME),
        fp16_tolerance=1e-9,
    )
    with pytest.raises(Fp16ToleranceError, match="tolerance"):
        export_model(settings)


def test_output_with_other_data_is_never_replaced(xlmr_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "precious"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    with pytest.raises(RepositoryError, match="not empty"):
        _export(xlmr_model_dir, output, Profile.CPU)
    with pytest.raises(RepositoryError, match="does not look like a model repository"):
        export_model(ExportSettings(model=str(xlmr_model_dir), output=output, serving=serving_settings(), force=True))
    assert (output / "notes.txt").read_text() == "keep me"


def test_wrong_kind_of_model_is_a_named_error(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path / "three-labels")
    with pytest.raises(ModelLoadError, match="3 output labels"):
        _export(tmp_path / "three-labels", tmp_path / "repo", Profile.CPU)


def _run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def test_cli_help() -> None:
    for argv in ([], ["render"], ["make-test-model"]):
        proc = _run_cli(*argv, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout


def test_cli_export_smoke(xlmr_model_dir: Path, tmp_path: Path) -> None:
    proc = _run_cli(
        "--model",
        str(xlmr_model_dir),
        "--profile",
        "cpu",
        "--output",
        str(tmp_path / "repo"),
        "--max-length",
        "128",
        "--length-buckets",
        "32,64",
        "--max-batch-size",
        "64",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "repo")
    assert "FP32 parity" in proc.stderr  # progress goes to stderr
    manifest = json.loads((tmp_path / "repo/manifest.json").read_text())
    assert manifest["validation"]["fp32"]["max_abs_diff"] <= 1e-4


@pytest.fixture
def unreachable_hub() -> Iterator[dict[str, str]]:
    """Endpoints of a hub that cannot be reached, whatever this machine's network is.

    ``refused``: nothing listens on the port. ``silent``: the connection is accepted and never
    answered, the case that hangs a client without a timeout.
    """
    with socket.socket() as refused, socket.socket() as silent:
        refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody reads or writes
        yield {
            "refused": f"http://127.0.0.1:{refused.getsockname()[1]}",
            "silent": f"http://127.0.0.1:{silent.getsockname()[1]}",
        }


def _cli_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint}  # empty cache: hub only
    env.pop("HF_HUB_OFFLINE", None)
    return env


def test_cli_missing_directory_fails_with_one_line(tmp_path: Path) -> None:
    proc = _run_cli("--model", "/nonexistent/model", "--output", str(tmp_path / "repo"), timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("reranker-export: error: ModelLoadError:") and "does not exist" in lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("hub", ["refused", "silent"])
def test_cli_unreachable_hub_fails_fast_with_one_line(
    hub: str, unreachable_hub: dict[str, str], tmp_path: Path
) -> None:
    # The subprocess timeout is the hang guard; the loader's own bound is --hub-timeout.
    env = _cli_env(tmp_path, unreachable_hub[hub])
    args = ("--model", "BAAI/bge-reranker-v2-m3", "--hub-timeout", "2", "--output", str(tmp_path / "repo"))
    proc = _run_cli(*args, timeout=45, env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("reranker-export: error: ModelLoadError: cannot reach the Hugging Face hub")
    assert "--model DIR" in lines[-1] and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_cli_rejects_inconsistent_settings(tmp_path: Path) -> None:
    proc = _run_cli("render", "--output", str(tmp_path / "r"), "--max-documents", "500", "--max-batch-size", "64")
    assert proc.returncode == 2
    assert "max_batch_size" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_size_architecture_through_the_tensorrt_export(tmp_path: Path) -> None:
    """bge-reranker-v2-m3's full architecture (random weights) through ``export_model``, tensorrt profile."""
    script = REPO_ROOT / "tests/scripts/export_full_size.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print("full-size tensorrt export:", json.dumps({k: v for k, v in figures.items() if k != "repository"}))
    assert figures["parameters"] > 560_000_000
    # The FP16 graph trtexec gets: a small graph beside one sidecar of ~1.1 GB of FP16 weights.
    files = figures["onnx_files"]
    assert sorted(files) == ["model.onnx", "model.onnx.data"]
    assert files["model.onnx"] < 50 * 2**20 and files["model.onnx.data"] > 2**30
    validation = figures["validation"]
    assert validation["fp32"]["max_abs_diff"] <= 1e-4
    assert validation["fp16"]["max_abs_diff"] <= 5e-2 and validation["fp16"]["top5_overlap"] >= 0.8
    assert validation["tensorrt_operators"]["passed"] is True
    repository = Path(figures["repository"])
    manifest = read_manifest(repository)
    sidecar = "reranker_model/onnx/model.onnx.data"
    assert manifest["files"][sidecar] == sha256_file(repository / sidecar)
    assert figures["peak_rss_gib"] < 20  # measured 15.0 GiB: the FP16 pass holds both copies (docs/benchmarks.md)


@pytest.mark.tensorrt
@pytest.mark.skipif(
    shutil.which("trtexec") is None,
    reason="TensorRT's trtexec is absent: the engine build runs in NVIDIA's TensorRT image on a GPU node",
)
def test_engine_builds_from_the_rendered_script(xlmr_model_dir: Path, tmp_path: Path) -> None:
    _export(xlmr_model_dir, tmp_path / "repo", Profile.TENSORRT)
    script = tmp_path / "repo/reranker_model/build_engine.sh"
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "repo/reranker_model/1/model.plan").stat().st_size > 0
