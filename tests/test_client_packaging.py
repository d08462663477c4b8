"""``pip install ".[client]"`` brings nothing heavy, and the client imports nothing heavy."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DISTRIBUTION = "triton-reranker"
HEAVY = {"torch", "onnx", "onnxruntime", "onnxruntime-gpu", "transformers", "tokenizers", "onnxscript"}
REPO = Path(__file__).resolve().parents[1]


def resolve(distribution: str, extras: frozenset[str]) -> dict[str, set[str]]:
    """Distributions needed by ``distribution[extras]``, per installed metadata, with their extras.

    Follows every requirement whose marker holds for this interpreter and the requested extras,
    through the installed distributions' own requirements.
    """
    needed: dict[str, set[str]] = {}
    pending = [(canonicalize_name(distribution), extras)]
    while pending:
        name, wanted = pending.pop()
        known = needed.get(name)
        if known is not None and wanted <= known:
            continue
        needed[name] = (known or set()) | set(wanted)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in sorted(needed[name])] or [{"extra": ""}]
            if requirement.marker is not None and not any(
                requirement.marker.evaluate(env) for env in [*environments, {"extra": ""}]
            ):
                continue
            pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return needed


def test_client_extra_resolves_without_heavy_dependencies() -> None:
    needed = resolve(DISTRIBUTION, frozenset({"client"}))
    assert {"tritonclient", "grpcio", "numpy", "protobuf"} <= needed.keys(), sorted(needed)
    assert "grpc" in needed["tritonclient"]
    assert not HEAVY & needed.keys(), sorted(HEAVY & needed.keys())


def test_resolver_sees_heavy_dependencies_of_other_extras() -> None:
    # The same walk does find them where they belong: the check above can fail.
    assert {"torch", "onnx", "transformers"} <= resolve(DISTRIBUTION, frozenset({"export"})).keys()
    assert "onnxruntime" in resolve(DISTRIBUTION, frozenset({"serve"}))


def test_client_imports_nothing_heavy() -> None:
    # Everything is installed in the dev venv, so check what importing the client actually loads.
    heavy_modules = sorted(name.replace("-", "_") for name in HEAVY)
    code = (
        "import sys, reranker_client, reranker_client.cli;"
        f"loaded = [m for m in {heavy_modules!r} if m in sys.modules];"
        "print(','.join(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"


def test_cli_entry_point_is_installed() -> None:
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("reranker-client") == "reranker_client.cli:main"
    executable = shutil.which("reranker-client", path=str(Path(sys.executable).parent))
    assert executable is not None
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    assert "rank" in result.stdout and "health" in result.stdout


@pytest.mark.slow
def test_pip_resolves_client_extra_without_heavy_dependencies(tmp_path: Path) -> None:
    """What a fresh ``pip install ".[client]"`` would install, resolved by pip against PyPI."""
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{REPO}[client]",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if result.returncode != 0 and "No matching distribution" in result.stderr + result.stdout:
        pytest.skip(f"PyPI not reachable: {result.stderr.strip().splitlines()[-1:]}")
    assert result.returncode == 0, result.stderr
    installs = {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert {"tritonclient", "grpcio", "numpy"} <= installs
    assert not HEAVY & installs, sorted(HEAVY & installs)
