"""Ranking quality of reranker deployments on a user's own data (BEIR or JSONL).

>>> from reranker_eval import GrpcDeployment, evaluate, load_dataset, parse_deployment, to_markdown
>>> dataset = load_dataset("my-queries.jsonl")  # doctest: +SKIP
>>> deployment = GrpcDeployment(parse_deployment("fp32=localhost:8001"))  # doctest: +SKIP
>>> print(to_markdown(evaluate(dataset, [deployment])))  # doctest: +SKIP

Installs with ``pip install "triton-reranker[eval]"`` (gRPC client, ir-measures, scipy). The
formats, the CLI (``reranker-eval``) and how to read the report are in ``docs/eval.md``.
"""

from .dataset import Candidate, EvalQuery, EvalSet, load_dataset, read_beir, read_jsonl, test_set
from .deployments import Deployment, DeploymentSpec, GrpcDeployment, open_deployment, parse_deployment
from .errors import DatasetError, DeploymentError, EvalError, ScoringError
from .evaluate import FIRST_STAGE, MEASURES, EvalReport, PairAgreement, SystemResult, evaluate, measure, rerank_order
from .report import to_json, to_markdown

__all__ = [
    "FIRST_STAGE",
    "MEASURES",
    "Candidate",
    "DatasetError",
    "Deployment",
    "DeploymentError",
    "DeploymentSpec",
    "EvalError",
    "EvalQuery",
    "EvalReport",
    "EvalSet",
    "GrpcDeployment",
    "PairAgreement",
    "ScoringError",
    "SystemResult",
    "evaluate",
    "load_dataset",
    "measure",
    "open_deployment",
    "parse_deployment",
    "read_beir",
    "read_jsonl",
    "rerank_order",
    "test_set",
    "to_json",
    "to_markdown",
]
