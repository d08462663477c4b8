"""Model families: each scored the way its own library scores it, remote-code models, bring-your-own ONNX.

Served through a real Triton (the cpu profile) and compared with the family's library:
sentence-transformers' ``CrossEncoder.predict`` for the BERT test model exported without flags
(``longest_first``, pairs where the query is long and both sides truncate), the same for a model
whose config maps ``AutoModelForSequenceClassification`` to modeling code written here
(``--trust-remote-code``), and for an ONNX file brought with ``--onnx``. The XLM-R test model keeps
FlagReranker's semantics; tests/test_ensemble.py holds its FlagReranker parity.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient

from reranker_export import cli
from reranker_export.errors import ModelLoadError, OnnxContractError
from reranker_export.families import choose_pair_semantics
from reranker_export.loading import ModelSource
from reranker_export.manifest import read_manifest
from reranker_export.pipeline import ExportSettings, export_model
from reranker_export.settings import DOCUMENTS, ENSEMBLE_NAME, QUERY, SCORES, PairSemantics, TokenizerSettings
from reranker_export.testmodels import long_document, multilingual_probe_pairs, relevance_examples
from reranker_steps.pairs import longest_first_lengths
from support import TEST_TOKENIZER, serving_settings

pytestmark = pytest.mark.timeout(600)

MAX_LENGTH = TEST_TOKENIZER.max_length  # 128
PARITY_ATOL = 1e-4
SCALE, SHIFT = 2.0, 0.5  # what the custom head of the remote-code model does to BERT's logit


# -- references and calls --------------------------------------------------------------------


def cross_encoder_scores(model_dir: Path, pairs: Sequence[tuple[str, str]], **kwargs: Any) -> np.ndarray:
    """Raw logits from sentence-transformers' CrossEncoder, the library ms-marco-style models use."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(model_dir), max_length=MAX_LENGTH, device="cpu", **kwargs)
    scores = model.predict(list(pairs), activation_fn=torch.nn.Identity(), batch_size=16)
    return np.asarray(scores, dtype=np.float64)


def served_scores(url: str, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The ``reranker`` ensemble's scores of (query, passage) pairs, one call per distinct query."""
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(i)
    scores = np.empty(len(pairs), dtype=np.float64)
    with grpcclient.InferenceServerClient(url) as client:
        for query, rows in by_query.items():
            q = np.array([query.encode()], dtype=np.object_)
            d = np.array([pairs[i][1].encode() for i in rows], dtype=np.object_)
            inputs = [
                grpcclient.InferInput(QUERY, [1], "BYTES"),
                grpcclient.InferInput(DOCUMENTS, [len(rows)], "BYTES"),
            ]
            inputs[0].set_data_from_numpy(q)
            inputs[1].set_data_from_numpy(d)
            result = client.infer(ENSEMBLE_NAME, inputs, client_timeout=60.0)
            scores[rows] = result.as_numpy(SCORES)
    return scores


def family_pairs() -> list[tuple[str, str]]:
    """Short pairs, long passages, long queries, and long queries with long passages (both truncate)."""
    pairs = [(q, p) for q, p in multilingual_probe_pairs() if p]
    for example in relevance_examples(seed=7, count=3):
        pairs.extend((example.query, document) for document in example.documents)
    for query_words in (50, 100):
        pairs.extend((long_document(query_words), long_document(n)) for n in (6, 30, 60, 120, 300))
    return pairs


def truncation_kinds(model_dir: Path, pairs: Sequence[tuple[str, str]]) -> set[str]:
    """Which sides ``longest_first`` cuts in these pairs at MAX_LENGTH."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    budget = MAX_LENGTH - tokenizer.num_special_tokens_to_add(True)
    kinds = set()
    for query, passage in pairs:
        na = len(tokenizer.encode(query, add_special_tokens=False).ids)
        nb = len(tokenizer.encode(passage, add_special_tokens=False).ids)
        qa, pb = longest_first_lengths(na, nb, budget)
        kinds.add(
            {(False, False): "none", (False, True): "passage", (True, False): "query", (True, True): "both"}[
                (qa < na, pb < nb)
            ]
        )
    return kinds


def assert_scores_like_cross_encoder(url: str, model_dir: Path, **kwargs: Any) -> np.ndarray:
    pairs = family_pairs()
    assert truncation_kinds(model_dir, pairs) == {"none", "passage", "query", "both"}
    served = served_scores(url, pairs)
    assert np.ptp(served) > 0.1  # a constant output would "match" a constant reference
    np.testing.assert_allclose(served, cross_encoder_scores(model_dir, pairs, **kwargs), rtol=0, atol=PARITY_ATOL)
    return served


# -- the family rule ----------------------------------------------------------------------------


def _source(tmp_path: Path, model_id: str, config: dict[str, Any], st_config: bool = False) -> ModelSource:
    if st_config:
        (tmp_path / "config_sentence_transformers.json").write_text("{}")
    return ModelSource(model_id=model_id, revision=None, local_dir=tmp_path, config=config)


@pytest.mark.parametrize(
    ("model_id", "config", "st_config", "expected"),
    [
        ("BAAI/bge-reranker-v2-m3", {"architectures": ["XLMRobertaForSequenceClassification"]}, True, "flag"),
        ("BAAI/bge-reranker-base", {"sentence_transformers": {"activation_fn": "x"}}, False, "flag"),
        ("/models/bge-copy", {"architectures": ["XLMRobertaForSequenceClassification"]}, False, "flag"),
        ("cross-encoder/ms-marco-MiniLM-L-6-v2", {"architectures": ["BertForSequenceClassification"]}, False, "lf"),
        ("/models/xlmr-st", {"architectures": ["XLMRobertaForSequenceClassification"]}, True, "lf"),
        (
            "jinaai/jina-reranker-v2-base-multilingual",
            {
                "architectures": ["XLMRobertaForSequenceClassification"],
                "auto_map": {"AutoModelForSequenceClassification": "modeling_xlm_roberta.X"},
            },
            False,
            "lf",
        ),
        ("mixedbread-ai/mxbai-rerank-base-v1", {"architectures": ["DebertaV2ForSequenceClassification"]}, False, "lf"),
    ],
)
def test_family_rule(tmp_path: Path, model_id: str, config: dict[str, Any], st_config: bool, expected: str) -> None:
    choice = choose_pair_semantics(_source(tmp_path, model_id, config, st_config))
    assert choice.semantics is (PairSemantics.FLAG if expected == "flag" else PairSemantics.LONGEST_FIRST)
    assert choice.reason


def test_query_max_length_is_flags_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="query_max_length applies to the flag pair semantics only"):
        TokenizerSettings(pair_semantics=PairSemantics.LONGEST_FIRST, query_max_length=32)
    code = cli.main(["--model", "x", "--output", str(tmp_path / "r"), "--skip-parity"])
    assert code == 2 and "--skip-parity applies to --onnx only" in capsys.readouterr().err


# -- BERT cross-encoder exported without flags ----------------------------------------------


def test_bert_export_without_flags_scores_like_cross_encoder(
    bert_server: Any, bert_repository: Path, bert_model_dir: Path
) -> None:
    manifest = read_manifest(bert_repository)
    assert manifest["pair_semantics"]["value"] == "longest_first"
    assert manifest["settings"]["tokenizer"]["pair_semantics"] == "longest_first"
    assert "pair_semantics" in (bert_repository / "reranker_tokenizer/config.pbtxt").read_text()
    served = assert_scores_like_cross_encoder(bert_server.grpc_url, bert_model_dir)

    # FlagReranker's semantics on the same pairs score differently: the rule matters here.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reranker_export.probes import encode_pairs
    from reranker_export.validation import torch_logits

    tokenizer = AutoTokenizer.from_pretrained(str(bert_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(bert_model_dir)).eval()
    flag = torch_logits(
        model,
        encode_pairs(
            tokenizer,
            family_pairs(),
            max_length=MAX_LENGTH,
            query_max_length=MAX_LENGTH * 3 // 4,
            input_names=("input_ids", "attention_mask", "token_type_ids"),
        ),
    )
    assert np.max(np.abs(flag - served)) > 0.1


# -- remote code -------------------------------------------------------------------------------

_CONFIGURATION = """
from transformers import BertConfig


class ScaledBertConfig(BertConfig):
    model_type = "scaled-bert"

    def __init__(self, score_scale=1.0, score_shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.score_scale = score_scale
        self.score_shift = score_shift
"""

_MODELING = '''
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from .configuration_scaled import ScaledBertConfig


class ScaledBertForSequenceClassification(BertForSequenceClassification):
    """BERT whose relevance logit is rescaled by its own head: code transformers does not ship."""

    config_class = ScaledBertConfig

    def forward(self, *args, **kwargs):
        kwargs["return_dict"] = True
        logits = super().forward(*args, **kwargs).logits
        return SequenceClassifierOutput(logits=logits * self.config.score_scale + self.config.score_shift)
'''


@pytest.fixture(scope="module")
def remote_code_model(bert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The BERT test model's weights behind a config that maps its classes to modeling code written here."""
    directory = tmp_path_factory.mktemp("remote-code") / "scaled-bert"
    shutil.copytree(bert_model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(
        model_type="scaled-bert",
        architectures=["ScaledBertForSequenceClassification"],
        auto_map={
            "AutoConfig": "configuration_scaled.ScaledBertConfig",
            "AutoModelForSequenceClassification": "modeling_scaled.ScaledBertForSequenceClassification",
        },
        score_scale=SCALE,
        score_shift=SHIFT,
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "configuration_scaled.py").write_text(_CONFIGURATION)
    (directory / "modeling_scaled.py").write_text(_MODELING)
    return directory


def test_remote_code_needs_the_flag(
    remote_code_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ExportSettings(model=str(remote_code_model), output=tmp_path / "repo", serving=serving_settings())
    with pytest.raises(ModelLoadError, match=r"ships its own modeling code .*add --trust-remote-code"):
        export_model(settings)
    code = cli.main(["--model", str(remote_code_model), "--profile", "cpu", "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("reranker-export: error: ModelLoadError:")
    assert "modeling_scaled.ScaledBertForSequenceClassification" in err[-1] and "--trust-remote-code" in err[-1]
    assert not (tmp_path / "repo").exists()


def test_remote_code_model_served_scores_like_its_library(
    remote_code_model: Path, bert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, server_pool: Any
) -> None:
    repository = tmp_path_factory.mktemp("repos") / "remote-code"
    result = export_model(
        ExportSettings(
            model=str(remote_code_model), output=repository, serving=serving_settings(), trust_remote_code=True
        )
    )
    assert result.manifest["model"]["trust_remote_code"] is True
    assert result.manifest["pair_semantics"]["value"] == "longest_first"
    assert "ships its own modeling code" in result.manifest["pair_semantics"]["chosen_by"]
    assert result.parity is not None and result.parity.max_abs_diff <= PARITY_ATOL
    server = server_pool.get("remote-code", repository)
    served = assert_scores_like_cross_encoder(server.grpc_url, remote_code_model, trust_remote_code=True)
    # The custom head ran, on BERT's own logits.
    np.testing.assert_allclose(
        served, SCALE * cross_encoder_scores(bert_model_dir, family_pairs()) + SHIFT, rtol=0, atol=3 * PARITY_ATOL
    )


# -- bring your own ONNX ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_onnx(bert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX export as a hub repository ships one: ``onnx/model.onnx`` with its weights in
    ``model.onnx_data`` (optimum's layout) and its output named ``scores``."""
    from transformers import AutoModelForSequenceClassification

    from reranker_export.onnx_export import export_onnx

    staging = tmp_path_factory.mktemp("shipped-staging") / "model.onnx"
    model = AutoModelForSequenceClassification.from_pretrained(str(bert_model_dir)).eval()
    export_onnx(model, staging, input_names=("input_ids", "attention_mask", "token_type_ids"))
    graph = onnx.load(str(staging))
    for node in graph.graph.node:
        node.output[:] = ["scores" if name == "logits" else name for name in node.output]
    graph.graph.output[0].name = "scores"
    target = tmp_path_factory.mktemp("shipped") / "onnx" / "model.onnx"
    target.parent.mkdir()
    onnx.save_model(graph, str(target), save_as_external_data=True, location="model.onnx_data", size_threshold=0)
    return target


@pytest.fixture(scope="module")
def tokenizer_only(bert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model's repository without PyTorch weights: its config and tokenizer only."""
    directory = tmp_path_factory.mktemp("tokenizer-only") / "model"
    directory.mkdir()
    for path in bert_model_dir.iterdir():
        if path.suffix == ".json":
            shutil.copy(path, directory / path.name)
    return directory


def test_byo_onnx_is_checked_against_pytorch(bert_model_dir: Path, shipped_onnx: Path, tmp_path: Path) -> None:
    result = export_model(
        ExportSettings(
            model=str(bert_model_dir), onnx=shipped_onnx, output=tmp_path / "repo", serving=serving_settings()
        )
    )
    assert result.parity is not None and result.parity.max_abs_diff <= PARITY_ATOL
    manifest = result.manifest
    assert manifest["model"]["onnx"]["file"] == str(shipped_onnx)
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    served = onnx.load(str(tmp_path / "repo/reranker_model/1/model.onnx"))
    assert [o.name for o in served.graph.output] == ["logits"]  # renamed to the contract's name


def test_byo_onnx_without_weights_needs_skip_parity(
    tokenizer_only: Path, shipped_onnx: Path, bert_model_dir: Path, tmp_path: Path, server_pool: Any
) -> None:
    settings = ExportSettings(
        model=str(tokenizer_only), onnx=shipped_onnx, output=tmp_path / "unchecked", serving=serving_settings()
    )
    with pytest.raises(ModelLoadError, match="pass --skip-parity"):
        export_model(settings)
    code = cli.main(
        [
            *("--model", str(tokenizer_only), "--onnx", str(shipped_onnx), "--skip-parity", "--profile", "cpu"),
            *("--output", str(tmp_path / "repo"), "--max-length", str(MAX_LENGTH), "--length-buckets", "32,64"),
            *("--max-batch-size", "64", "--tokenizer-instances", "1"),
        ]
    )
    assert code == 0
    manifest = read_manifest(tmp_path / "repo")
    assert manifest["validation"]["fp32"]["skipped"] is True
    assert manifest["pair_semantics"]["value"] == "longest_first"
    server = server_pool.get("byo-onnx", tmp_path / "repo")
    assert_scores_like_cross_encoder(server.grpc_url, bert_model_dir)


def test_onnx_that_does_not_fit_the_contract_is_refused(shipped_onnx: Path, tmp_path: Path) -> None:
    from reranker_export.byo_onnx import check_contract, stage_onnx

    model = onnx.load(str(shipped_onnx), load_external_data=False)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    with pytest.raises(OnnxContractError, match=r"'input_ids' is INT32.*INT64"):
        check_contract(model)
    model = onnx.load(str(shipped_onnx), load_external_data=False)
    model.graph.input[1].name = "mask"
    with pytest.raises(OnnxContractError, match="unknown: \\['mask'\\]"):
        check_contract(model)
    model = onnx.load(str(shipped_onnx), load_external_data=False)
    model.graph.output.append(onnx.helper.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, ["b", 8]))
    with pytest.raises(OnnxContractError, match="none is named 'logits'"):
        check_contract(model)
    with pytest.raises(OnnxContractError, match="does not exist"):
        stage_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx")
