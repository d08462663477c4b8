"""INT8 and fused FP32 for the cpu profile: the export's gate, and what a user sees through Triton.

Both trained test models are exported with ``--precision int8`` and served; their held-out
ranking (top-1 accuracy, nDCG@10 over 96 queries) is compared with the FP32 export served the
same way. Speed is measured by ``reranker-bench precision`` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient

from reranker_export import cli
from reranker_export.errors import Int8AgreementError
from reranker_export.manifest import read_manifest
from reranker_export.pipeline import ExportResult, ExportSettings, export_model
from reranker_export.settings import DOCUMENTS, ENSEMBLE_NAME, QUERY, SCORES, Precision
from reranker_export.testmodels import RelevanceExample, relevance_examples
from support import serving_settings

pytestmark = pytest.mark.timeout(600)

EXAMPLES = 96  # one point of accuracy is one example


def _export(model_dir: Path, output: Path, **overrides: Any) -> ExportResult:
    return export_model(
        ExportSettings(
            model=str(model_dir),
            output=output,
            serving=serving_settings(precision=Precision.INT8),
            force=True,
            **overrides,
        )
    )


@pytest.fixture(scope="module", params=["xlmr", "bert"])
def int8_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ExportResult]:
    kind: str = request.param
    output = tmp_path_factory.mktemp("repos") / f"int8-{kind}"
    return kind, _export(request.getfixturevalue(f"{kind}_model_dir"), output)


def _rank_all(url: str, examples: list[RelevanceExample]) -> list[np.ndarray]:
    out = []
    with grpcclient.InferenceServerClient(url) as client:
        for example in examples:
            inputs = [
                grpcclient.InferInput(QUERY, [1], "BYTES"),
                grpcclient.InferInput(DOCUMENTS, [len(example.documents)], "BYTES"),
            ]
            inputs[0].set_data_from_numpy(np.array([example.query.encode()], dtype=np.object_))
            inputs[1].set_data_from_numpy(np.array([d.encode() for d in example.documents], dtype=np.object_))
            out.append(client.infer(ENSEMBLE_NAME, inputs, client_timeout=60.0).as_numpy(SCORES))
    return out


def _quality(scores: list[np.ndarray], examples: list[RelevanceExample]) -> tuple[float, float]:
    """(top-1 accuracy, nDCG@10) in points: one relevant document per example."""
    ranks = [int(np.sum(s > s[e.relevant_index])) for s, e in zip(scores, examples, strict=True)]
    top1 = 100 * np.mean([r == 0 for r in ranks])
    ndcg = 100 * np.mean([1 / np.log2(r + 2) if r < 10 else 0.0 for r in ranks])
    return float(top1), float(ndcg)


def test_int8_export_is_gated_fused_and_quantized(int8_export: tuple[str, ExportResult]) -> None:
    _, result = int8_export
    manifest = read_manifest(result.repository)
    assert manifest["precision"] == "int8"
    (probe,) = manifest["validation"]["int8"]
    assert probe["source"] == "probe set" and probe["queries"] == 7
    assert probe["top5_overlap"] >= 0.98 and probe["kendall_tau"] >= 0.9
    fusion = manifest["validation"]["fusion"]
    assert fusion["fused_operators"].get("SkipLayerNormalization", 0) >= 2
    assert fusion["parity"]["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(result.repository / "reranker_model/1/model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    # The encoder's weight MatMuls are INT8; the head's two (pooler/classifier) read FP32 weights.
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    float_matmuls = [n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in floats]
    assert len(float_matmuls) == 2 and all("classifier" in w or "pooler" in w for w in float_matmuls), float_matmuls
    assert ops.count("MatMulInteger") >= 2 * 4  # q, k, v, out, two feed-forward per layer: at least 4 per layer


def test_int8_served_ranks_as_well_as_fp32(
    int8_export: tuple[str, ExportResult], request: pytest.FixtureRequest, server_pool: Any
) -> None:
    kind, result = int8_export
    fp32_server = request.getfixturevalue("triton_server" if kind == "xlmr" else "bert_server")
    int8_server = server_pool.get(f"int8-{kind}", result.repository)
    examples = relevance_examples(seed=21, count=EXAMPLES)
    fp32_scores = _rank_all(fp32_server.grpc_url, examples)
    int8_scores = _rank_all(int8_server.grpc_url, examples)
    fp32_top1, fp32_ndcg = _quality(fp32_scores, examples)
    int8_top1, int8_ndcg = _quality(int8_scores, examples)
    print(f"{kind}: top-1 {fp32_top1:.1f} -> {int8_top1:.1f}, nDCG@10 {fp32_ndcg:.2f} -> {int8_ndcg:.2f}")
    assert fp32_top1 >= 80  # a trained model: the comparison means something
    assert int8_top1 >= fp32_top1 - 2
    assert int8_ndcg >= fp32_ndcg - 1
    # Not the FP32 graph under another name: the logits moved.
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(fp32_scores, int8_scores, strict=True)) > 1e-4


def test_int8_gate_on_a_users_file_and_its_failure(xlmr_model_dir: Path, tmp_path: Path) -> None:
    agreement = tmp_path / "mine.jsonl"
    examples = relevance_examples(seed=4, count=12)
    agreement.write_text(
        "\n".join(json.dumps({"query": e.query, "candidates": list(e.documents)}) for e in examples) + "\n"
    )
    result = _export(xlmr_model_dir, tmp_path / "repo", agreement_file=agreement)
    probe, mine = result.int8
    assert probe.source == "probe set"
    assert mine.source == str(agreement) and mine.queries == 12 and mine.top5_overlap >= 0.9

    with pytest.raises(Int8AgreementError, match=r"Kendall tau .* \(minimum 1\.01\)"):
        _export(xlmr_model_dir, tmp_path / "strict", int8_min_kendall_tau=1.01)
    assert not (tmp_path / "strict").exists()


def test_fused_fp32_export(xlmr_model_dir: Path, tmp_path: Path) -> None:
    result = export_model(
        ExportSettings(model=str(xlmr_model_dir), output=tmp_path / "repo", serving=serving_settings(graph_fusion=True))
    )
    assert result.manifest["precision"] == "fp32" and not result.int8
    assert result.manifest["validation"]["fusion"]["parity"]["max_abs_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(tmp_path / "repo/reranker_model/1/model.onnx")).graph.node}
    assert "SkipLayerNormalization" in ops and "MatMulInteger" not in ops


def test_int8_is_for_the_cpu_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["render", "--profile", "tensorrt", "--precision", "int8", "--output", str(tmp_path / "r")])
    assert code == 2 and "for the cpu profile" in capsys.readouterr().err
