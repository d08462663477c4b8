"""Shared fixtures: tiny models built on the spot, exported repositories, and real Triton servers.

Everything expensive is session-scoped and built once, on first use: the two test models, one
export per (model kind, profile, overflow mode) the suite needs, and one server per repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import WINDOW_MERGE_DELAY_US, WINDOW_STRIDE, export_cpu_repository, rerender_cpu_repository

# Under CI=true a skip fails the run, except for a missing GPU or TensorRT (ci_skips.py).
pytest_plugins = ["ci_skips"]


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    progress: list[str]
    """The builder's progress lines."""


def _build(kind_name: str, tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    from reranker_export.testmodels import TestModelKind, build_test_model

    lines: list[str] = []
    kind = TestModelKind(kind_name)
    path = build_test_model(tmp_path_factory.mktemp("models") / kind.value, kind=kind, progress=lines.append)
    return BuiltModel(path=path, progress=lines)


@pytest.fixture(scope="session")
def built_xlmr(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return _build("xlm-roberta", tmp_path_factory)


@pytest.fixture(scope="session")
def built_bert(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return _build("bert", tmp_path_factory)


@pytest.fixture(scope="session")
def xlmr_model_dir(built_xlmr: BuiltModel) -> Path:
    return built_xlmr.path


@pytest.fixture(scope="session")
def bert_model_dir(built_bert: BuiltModel) -> Path:
    return built_bert.path


# -- exported repositories (cpu profile) --------------------------------------------------------


@pytest.fixture(scope="session")
def cpu_repository(xlmr_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XLM-R test model, truncate mode, the test settings."""
    return export_cpu_repository(xlmr_model_dir, tmp_path_factory.mktemp("repos") / "cpu")


@pytest.fixture(scope="session")
def bert_repository(bert_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cpu_repository(bert_model_dir, tmp_path_factory.mktemp("repos") / "bert")


@pytest.fixture(scope="session")
def window_repository(cpu_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XLM-R in window mode; its model step waits long enough for concurrent requests to merge."""
    from reranker_export.settings import Overflow

    return rerender_cpu_repository(
        cpu_repository,
        tmp_path_factory.mktemp("repos") / "window",
        overflow=Overflow.WINDOW,
        window_stride=WINDOW_STRIDE,
        max_queue_delay_us=WINDOW_MERGE_DELAY_US,
    )


# -- servers, one per repository ----------------------------------------------------------------


class ServerPool:
    """The session's servers, started on first use and stopped together at the end.

    Triton takes a few seconds to shut down gracefully; stopping the servers side by side
    instead of one after another saves that wait for all but one.
    """

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.servers: dict[str, Any] = {}

    def get(self, name: str, repository: Path) -> Any:
        from reranker_serve import TritonServer

        if name not in self.servers:
            self.servers[name] = TritonServer(repository, log_file=self.logs / f"triton-{name}.log").start()
        return self.servers[name]

    def stop_all(self) -> None:
        with ThreadPoolExecutor(max(len(self.servers), 1)) as pool:
            list(pool.map(lambda server: server.stop(), self.servers.values()))


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("logs"))
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def triton_server(cpu_repository: Path, server_pool: ServerPool) -> Any:
    return server_pool.get("session", cpu_repository)


@pytest.fixture(scope="session")
def bert_server(bert_repository: Path, server_pool: ServerPool) -> Any:
    return server_pool.get("bert", bert_repository)


@pytest.fixture(scope="session")
def window_server(window_repository: Path, server_pool: ServerPool) -> Any:
    return server_pool.get("window", window_repository)


# -- the HTTP gateway in front of the session's server -----------------------------------------


@pytest.fixture(scope="session")
def gateway(triton_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``reranker-gateway`` (a subprocess, default settings) in front of ``triton_server``."""
    from support import start_gateway

    running = start_gateway(triton_server.grpc_url, tmp_path_factory.mktemp("gateway"))
    yield running
    running.stop()
