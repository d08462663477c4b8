"""Exceptions of the load-test package: one root, named subclasses."""

from __future__ import annotations


class LoadtestError(Exception):
    """Root of every error raised by ``reranker_loadtest``."""


class WorkloadError(LoadtestError, ValueError):
    """Invalid workload settings (lengths, languages, candidates)."""


class SloError(LoadtestError, ValueError):
    """Invalid SLO settings or an unreadable SLO report."""


class TargetUnavailableError(LoadtestError):
    """The server under test cannot be reached or its model is not ready."""
