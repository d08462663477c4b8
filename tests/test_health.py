"""The deep health check (``RerankerClient.canary``, ``reranker-client health --canary``).

Against a real Triton whose ``reranker_model`` stub processes are killed with SIGKILL, as the
kernel's OOM killer does in a memory-limited pod: Triton keeps reporting live and ready while
every request fails; the canary is what sees it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reranker_bench.heal import kill_stubs
from reranker_client import AsyncRerankerClient, RerankerClient
from reranker_client.config import CORE_MODEL_NAME

CLI = [sys.executable, "-m", "reranker_client.cli"]


@pytest.fixture
def own_server(cpu_repository: Path, tmp_path: Path) -> Iterator[Any]:
    """A server of its own: this test breaks it."""
    from reranker_serve import TritonServer

    server = TritonServer(cpu_repository, log_file=tmp_path / "triton.log").start()
    try:
        yield server
    finally:
        # A server with a dead stub waits its whole exit timeout for it; nothing here needs grace.
        server.stop(grace_s=1.0)


def _health(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "health", "--url", url, *args], capture_output=True, text=True, timeout=120)


def test_canary_passes_on_a_healthy_server(triton_server: Any) -> None:
    with RerankerClient(triton_server.grpc_url) as client:
        result = client.canary()
    assert result.healthy and result.error is None and result.seconds > 0

    async def run() -> bool:
        async with AsyncRerankerClient(triton_server.grpc_url) as client:
            return (await client.canary()).healthy

    assert asyncio.run(run())
    done = _health(triton_server.grpc_url, "--canary")
    assert done.returncode == 0 and "canary: ok" in done.stdout, done.stdout + done.stderr


def test_canary_sees_a_dead_stub_that_readiness_misses(own_server: Any) -> None:
    url = own_server.grpc_url
    with RerankerClient(url) as client:
        assert client.canary().healthy
        assert kill_stubs(own_server.pid, CORE_MODEL_NAME) >= 1
        # The zombie: Triton still answers live and ready...
        assert client.is_live() and client.is_ready()
        # ...but the canary, like every request, fails, and says why.
        result = client.canary()
    assert not result.healthy and result.error is not None
    # The dead stub's requests fail (INTERNAL "Stub process ... is not healthy"), or hang until the
    # deadline while Triton has not noticed yet: either way the canary reports it.
    assert result.error.split(":")[0] in {"ServerError", "ServerUnavailableError", "DeadlineExceededError"}, (
        result.error
    )
    plain, deep = _health(url), _health(url, "--canary")
    assert plain.returncode == 0, plain.stdout + plain.stderr  # readiness alone is fooled
    assert deep.returncode == 1 and "canary: FAILED" in deep.stdout and "Traceback" not in deep.stderr
