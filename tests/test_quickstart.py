"""The README's main job, offline: ``MODEL=test scripts/quickstart.sh``.

The script installs the ``demo`` extra, then runs ``reranker-demo --model test``; this test runs that
same command end to end (export, a real Triton, the gRPC client) with the hub made unreachable, and
checks the ranking it prints.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from reranker_export.testmodels import relevance_examples

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(Path(sys.executable).with_name("reranker-demo"))  # the console script of this venv
ROW = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d+)\s+(.+)$")


def test_quickstart_script_runs_the_demo_module() -> None:
    script = (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    assert re.search(r"^scripts/bootstrap\.sh demo$", script, re.M)
    assert re.search(r'^exec \.venv/bin/reranker-demo --model "\$\{MODEL:-', script, re.M)


def test_quickstart_with_the_test_model_ranks_its_sample(xlmr_model_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    # The demo builds this same deterministic model on first use; the session's copy saves the
    # training time (test_testmodels.py covers building it).
    shutil.copytree(xlmr_model_dir, workdir / "test-model")
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))  # nothing listens: any hub call would fail, not hang
        env = {
            **os.environ,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": f"http://127.0.0.1:{closed_port.getsockname()[1]}",
        }
        proc = subprocess.run(
            [DEMO, "--model", "test", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting Triton" in proc.stderr  # progress lines go to stderr

    example = relevance_examples(count=1)[0]
    assert f"query: {example.query}" in proc.stdout
    rows = [m.groups() for m in map(ROW.match, proc.stdout.splitlines()) if m]
    assert [int(rank) for rank, _, _ in rows] == list(range(1, len(example.documents) + 1))
    assert sorted(doc for _, _, doc in rows) == sorted(example.documents)
    scores = [float(score) for _, score, _ in rows]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)  # sigmoid, best first
    assert rows[0][2] == example.documents[example.relevant_index]
