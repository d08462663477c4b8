"""The one exception of the benchmark tools."""

from __future__ import annotations


class BenchmarkError(Exception):
    """A benchmark could not be set up or run, or the systems it compares disagree."""
