"""Shared fixtures: tiny models built on the spot, exported repositories, and a real Triton server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import export_cpu_repository

# Under CI=true a skip fails the run, except for a missing GPU or TensorRT (ci_skips.py).
pytest_plugins = ["ci_skips"]


@pytest.fixture(scope="session")
def xlmr_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reranker_export.testmodels import TestModelKind, build_test_model

    return build_test_model(tmp_path_factory.mktemp("models") / "xlmr", kind=TestModelKind.XLM_ROBERTA)


@pytest.fixture(scope="session")
def bert_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reranker_export.testmodels import TestModelKind, build_test_model

    return build_test_model(tmp_path_factory.mktemp("models") / "bert", kind=TestModelKind.BERT)


@pytest.fixture(scope="session")
def cpu_repository(xlmr_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cpu_repository(xlmr_model_dir, tmp_path_factory.mktemp("repos") / "cpu")


@pytest.fixture(scope="session")
def triton_server(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from reranker_serve import TritonServer

    log = tmp_path_factory.mktemp("logs") / "triton-session.log"
    with TritonServer(cpu_repository, log_file=log) as server:
        yield server
