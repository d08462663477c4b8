"""reranker_serve against a real tritonserver (from the nvidia-pytriton wheel) and tiny python models."""

from __future__ import annotations

import importlib.abc
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from reranker_serve import (
    SERVER_FLAGS,
    ModelRepositoryError,
    ServerStartError,
    ServerTimeoutError,
    TritonNotFoundError,
    TritonServer,
    find_triton,
    server_error,
)

ADD_ONE_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [
  {{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "prefix" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

# y = x + 1, and the stub's sys.prefix (shows which interpreter the python backend runs).
ADD_ONE_MODEL = """
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        prefix = np.array([sys.prefix.encode()], dtype=np.object_)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("y", (x + 1).astype(np.float32)),
                pb_utils.Tensor("prefix", prefix),
            ]))
        return responses
"""

RAISING_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("{message}")

    def execute(self, requests):
        return []
"""

# Never finishes loading: the server can never become ready.
HANGING_MODEL = """
import threading


class TritonPythonModel:
    def initialize(self, args):
        threading.Event().wait()

    def execute(self, requests):
        return []
"""


def write_model(repo: Path, name: str, model_py: str, config: str | None = None) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config or ADD_ONE_CONFIG.format(name=name))
    (repo / name / "1" / "model.py").write_text(model_py)


@pytest.fixture
def add_one_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    return repo


def live_group_members(pgid: int) -> list[int]:
    """Processes (zombies excepted) in process group ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def shm_prefix(server: TritonServer) -> str:
    (arg,) = [a for a in server.command if "shm-region-prefix-name=" in a]
    return arg.split("shm-region-prefix-name=", 1)[1]


def add_one(grpc_url: str, values: Sequence[float]) -> tuple[np.ndarray, str]:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        x = grpcclient.InferInput("x", [len(values)], "FP32")
        x.set_data_from_numpy(np.asarray(values, dtype=np.float32))
        result = client.infer("add_one", [x])
        prefix = result.as_numpy("prefix")[0]
        return result.as_numpy("y"), prefix.decode() if isinstance(prefix, bytes) else str(prefix)
    finally:
        client.close()


def http_get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as reply:
        return reply.status, reply.read().decode()


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "reranker_serve", *map(str, args)]


@pytest.mark.timeout(120)
def test_serves_inference_and_stops_without_leftovers(add_one_repo: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "triton.log"
    server = TritonServer(add_one_repo, log_file=log_file)
    with server:
        assert server.is_ready()
        pid = server.pid
        assert pid is not None and live_group_members(pid)
        y, prefix = add_one(server.grpc_url, [1.0, 2.0, 41.0])
        np.testing.assert_array_equal(y, np.array([2.0, 3.0, 42.0], dtype=np.float32))
        # The stub runs this interpreter's environment (found through PATH), not the system python.
        assert prefix == sys.prefix
        assert http_get(f"{server.http_url}/v2/health/ready")[0] == 200
        status, metrics = http_get(server.metrics_url)
        assert status == 200 and "nv_inference_request_success" in metrics
        assert server.log_path == log_file
        log = log_file.read_text()
        assert "successfully loaded 'add_one'" in log
        # The flags reached the server (its option table).
        assert re.search(r"model_control_mode\s*\|\s*MODE_NONE", log)
        assert re.search(r"strict_readiness\s*\|\s*1", log)
        assert re.search(r"strict_model_config\s*\|\s*1", log)
        prefix_name = shm_prefix(server)
        assert list(Path("/dev/shm").glob(f"{prefix_name}*"))
    assert not server.is_running() and not server.is_ready()
    assert live_group_members(pid) == []
    assert list(Path("/dev/shm").glob(f"{prefix_name}*")) == []
    assert log_file.is_file()
    server.stop()  # idempotent


def test_server_flags_are_the_deployment_contract() -> None:
    assert set(SERVER_FLAGS) >= {
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        "--log-verbose=0",
    }
    assert not any("port" in flag for flag in SERVER_FLAGS)


@pytest.mark.timeout(120)
def test_model_failing_to_load_raises_the_server_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    token = f"boom-{uuid.uuid4().hex[:8]}"
    write_model(repo, "add_one", ADD_ONE_MODEL)
    write_model(repo, "broken", RAISING_MODEL.format(message=token))
    server = TritonServer(repo)
    with pytest.raises(ServerStartError) as info:
        server.start()
    error = info.value
    assert error.server_error.startswith("failed to load 'broken' version 1:")
    assert token in error.server_error and token in str(error)
    assert "\n" not in str(error)
    assert error.log_path == server.log_path and token in error.log_path.read_text()
    assert server.pid is not None and live_group_members(server.pid) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("bad_input", "expected"),
    [
        ('{ name: "x" data_type: TYPE_FLOAT32 dims: [ -1 ] }', "TYPE_FLOAT32"),
        ('{ name: "x" data_type: TYPE_FP32 }', "must specify 'dims'"),
    ],
)
def test_bad_config_raises_the_server_error(tmp_path: Path, bad_input: str, expected: str) -> None:
    repo = tmp_path / "repo"
    good_input = '{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }'
    config = ADD_ONE_CONFIG.format(name="cfg")
    assert good_input in config
    write_model(repo, "cfg", ADD_ONE_MODEL, config.replace(good_input, bad_input))
    with pytest.raises(ServerStartError, match=re.escape(expected)) as info:
        TritonServer(repo).start()
    assert "'cfg'" in info.value.server_error


@pytest.mark.timeout(120)
def test_two_servers_at_once(add_one_repo: Path) -> None:
    with ExitStack() as stack:
        servers = [stack.enter_context(TritonServer(add_one_repo)) for _ in range(2)]
        ports = {p for s in servers for p in (s.http_port, s.grpc_port, s.metrics_port)}
        assert len(ports) == 6
        assert shm_prefix(servers[0]) != shm_prefix(servers[1])
        for offset, server in enumerate(servers):
            np.testing.assert_array_equal(add_one(server.grpc_url, [offset])[0], [offset + 1.0])
    assert all(live_group_members(s.pid) == [] for s in servers if s.pid is not None)


@pytest.mark.timeout(120)
def test_startup_timeout_kills_the_server(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "hangs", HANGING_MODEL)
    server = TritonServer(repo, startup_timeout_s=1.0, stop_grace_s=1.0)
    with pytest.raises(ServerTimeoutError, match="not ready after 1 s"):
        server.start()
    assert server.pid is not None and live_group_members(server.pid) == []


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match="not a directory"):
        TritonServer(tmp_path / "nope").start()


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch, add_one_repo: Path) -> None:
    class HidePytriton(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: object, target: object = None) -> None:
            if fullname == "pytriton":
                raise ModuleNotFoundError("No module named 'pytriton'")

    assert find_triton().binary.is_file()
    monkeypatch.delitem(sys.modules, "pytriton", raising=False)
    monkeypatch.setattr(sys, "meta_path", [HidePytriton(), *sys.meta_path])
    with pytest.raises(TritonNotFoundError, match=re.escape('pip install "triton-reranker[serve]"')):
        TritonServer(add_one_repo).start()


def test_server_error_picks_the_telling_line() -> None:
    # Lines as tritonserver 2.51 writes them on this CPU-only machine.
    log = [
        'E1122 04:18:43.527738 4000 server.cc:241] "CudaDriverHelper has not been initialized."',
        'E1122 04:18:43.870305 4000 backend_model.cc:692] "ERROR: Failed to create instance: RuntimeError: x"',
        "E1122 04:18:43.870409 4000 model_lifecycle.cc:642] \"failed to load 'm' version 1: Internal: "
        'RuntimeError: x\\n\\nAt:\\n  /r/m/1/model.py(3): initialize\\n"',
        "error: creating server: Internal - failed to load all models",
    ]
    assert server_error(log) == "failed to load 'm' version 1: Internal: RuntimeError: x"
    assert server_error([log[0], log[3]]) == "error: creating server: Internal - failed to load all models"
    assert server_error(log[:1]) is None
    proto = [
        "[libprotobuf ERROR /b/text_format.cc:337] Error parsing text-format inference.ModelConfig: 4:45: "
        'Unknown enumeration value of "TYPE_X" for field "data_type".',
        "E1122 04:18:54.121302 4090 model_repository_manager.cc:1460] \"Poll failed for model directory 'c': "
        'failed to read text proto from /r/c/config.pbtxt"',
    ]
    message = server_error(proto)
    assert message is not None
    assert message.startswith("Poll failed for model directory 'c'") and "TYPE_X" in message


@pytest.mark.timeout(60)
def test_cli_help() -> None:
    result = subprocess.run(cli("--help"), capture_output=True, text=True, timeout=50, check=False)
    assert result.returncode == 0
    assert "--model-repository" in result.stdout and "--timeout" in result.stdout
    assert all(
        flag in result.stdout for flag in ("--no-heal", "--canary-interval", "--canary-failures", "--max-restarts")
    )


@pytest.mark.timeout(60)
def test_cli_canary_timeout_past_the_interval_is_a_usage_error(add_one_repo: Path) -> None:
    args = ("--model-repository", add_one_repo, "--canary-interval", "1", "--canary-timeout", "2")
    result = subprocess.run(cli(*args), capture_output=True, text=True, timeout=50, check=False)
    assert result.returncode == 2 and "canary_timeout_s must not exceed canary_interval_s" in result.stderr


@pytest.mark.timeout(120)
def test_cli_broken_repository_exits_with_one_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    token = f"boom-{uuid.uuid4().hex[:8]}"
    write_model(repo, "broken", RAISING_MODEL.format(message=token))
    result = subprocess.run(
        cli("--model-repository", repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reranker-serve: error: failed to load 'broken'") and token in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.timeout(120)
def test_cli_serves_until_sigterm(add_one_repo: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "cli.log"
    server_id = f"cli-test-{uuid.uuid4().hex[:8]}"  # passed through `--`, echoed in the server's options
    command = cli(
        "--model-repository",
        add_one_repo,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--log-file",
        log_file,
        "--",
        f"--id={server_id}",
    )
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        printed = []
        for line in process.stdout:  # bounded by the test timeout; ends early if the CLI exits
            printed.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(printed)
        pid_match = re.search(r"\(pid (\d+)\)", text)
        grpc_match = re.search(r"gRPC:\s+(\S+)", text)
        http_match = re.search(r"HTTP:\s+(\S+)", text)
        assert pid_match and grpc_match and http_match, text
        server_pid = int(pid_match[1])
        assert http_get(f"{http_match[1]}/v2/health/ready")[0] == 200
        np.testing.assert_array_equal(add_one(grpc_match[1], [1.0])[0], [2.0])
        assert f"log:     {log_file}" in text
        assert re.search(rf"server_id\s*\|\s*{server_id}", log_file.read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        assert process.stderr is not None and process.stderr.read() == ""
    assert live_group_members(server_pid) == []


@pytest.mark.timeout(240)
def test_cli_restarts_a_killed_server_then_gives_up_past_max_restarts(cpu_repository: Path, tmp_path: Path) -> None:
    from reranker_client import RerankerClient

    command = cli(
        "--model-repository",
        cpu_repository,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--log-file",
        tmp_path / "triton.log",
        "--max-restarts",
        "1",
    )
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        printed = []
        for line in process.stdout:  # bounded by the test timeout; ends early if the CLI exits
            printed.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(printed)
        pid_match = re.search(r"\(pid (\d+)\)", text)
        grpc_match = re.search(r"gRPC:\s+(\S+)", text)
        assert pid_match and grpc_match and "healing: canary every 5 s" in text, text
        first_pid = int(pid_match[1])
        os.kill(first_pid, signal.SIGKILL)
        logged = []
        for line in process.stderr:  # the supervisor's log, until the restarted server serves
            logged.append(line)
            if "serving again" in line:
                break
        restarted = re.search(r"serving again .*pid (\d+)\)", logged[-1])
        assert restarted and int(restarted[1]) != first_pid, logged
        assert any("server exited" in line and "code -9" in line for line in logged), logged
        assert any("restarting tritonserver (1 of at most 1" in line for line in logged), logged
        # Same port as before the kill: a client that knew the address reranks again.
        with RerankerClient(grpc_match[1]) as client:
            assert client.canary().healthy
        assert live_group_members(first_pid) == []
        # The second death is one restart too many: exit 1 with one clear line, and nothing left.
        second_pid = int(restarted[1])
        os.kill(second_pid, signal.SIGKILL)
        assert process.wait(timeout=120) == 1
        rest = process.stderr.read()
    assert "reranker-serve: error: tritonserver stopped serving again after 1 restart(s)" in rest, rest
    assert "giving up" in rest and "Traceback" not in rest
    assert live_group_members(second_pid) == []
