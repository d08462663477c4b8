"""The CI guard (ci_skips.py): a skip fails under CI=true unless the test needs a GPU or TensorRT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = """
import pytest

def test_tool_missing():
    pytest.skip("kubectl is not installed")

@pytest.mark.gpu
def test_needs_gpu():
    pytest.skip("no CUDA GPU")

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 failed, 1 skipped, 1 xfailed"), ("", "2 skipped, 1 xfailed")])
def test_skips_fail_only_under_ci(ci: str, outcome: str, tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n", encoding="utf-8")
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "ci_skips", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert outcome in proc.stdout, proc.stdout
    if ci:
        assert "skipped under CI=true" in proc.stdout and "kubectl is not installed" in proc.stdout
