"""Each role's extra, installed alone into a fresh venv (within the lock), runs its command.

``[serve]`` runs ``reranker-serve`` without torch or transformers, and the demo, which also needs
export and client, says which extra to install; ``[loadtest]`` runs ``reranker-loadtest`` without
torch, onnxruntime or the Triton wheel; ``[eval]`` runs ``reranker-eval`` without them either;
``[gateway]`` runs ``reranker-gateway`` with neither the model stack nor Triton (its container image
installs only this extra).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import LOCK, ROOT

EXTRAS = {
    # extra: (command that must answer --help, distributions that must not be installed)
    "serve": ("reranker-serve", {"torch", "transformers", "onnx", "locust"}),
    "loadtest": ("reranker-loadtest", {"torch", "transformers", "onnxruntime", "tokenizers", "nvidia-pytriton"}),
    "eval": ("reranker-eval", {"torch", "transformers", "onnxruntime", "tokenizers", "nvidia-pytriton", "locust"}),
    "gateway": (
        "reranker-gateway",
        {"torch", "transformers", "onnx", "onnxruntime", "tokenizers", "nvidia-pytriton", "locust"},
    ),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("*.whl")
    return built


def _fresh_venv(path: Path, wheel: Path, extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--progress-bar", "off"]
    subprocess.run([*install, "-c", str(LOCK), f"{wheel}[{extra}]"], check=True, capture_output=True, timeout=600)
    return path / "bin"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_extra_alone_runs_its_command(extra: str, wheel: Path, tmp_path: Path) -> None:
    command, absent = EXTRAS[extra]
    bin_dir = _fresh_venv(tmp_path / extra, wheel, extra)
    done = subprocess.run([bin_dir / command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
    listed = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.metadata as m; print('\\n'.join(d.name for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {line.strip().lower() for line in listed.stdout.splitlines()}
    assert not absent & installed, sorted(absent & installed)
    if extra == "serve":
        demo = subprocess.run(
            [bin_dir / "reranker-demo", "--model", "test"], capture_output=True, text=True, timeout=120
        )
        assert demo.returncode == 1 and "Traceback" not in demo.stderr
        assert 'pip install "triton-reranker[demo]"' in demo.stderr
