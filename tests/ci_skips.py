"""Pytest plugin: under ``CI=true`` a skipped test fails; CI must never go green by skipping.

Only tests marked ``gpu`` or ``tensorrt`` may skip there, since CI machines have neither. Loaded
by ``conftest.py`` (``pytest_plugins``), and on its own by ``test_ci_skips.py``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

HARDWARE_MARKERS = ("gpu", "tensorrt")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and os.environ.get("CI", "").lower() == "true"
        and not any(item.get_closest_marker(name) for name in HARDWARE_MARKERS)
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where everything the suite needs must be installed: {reason}"
