"""Exceptions of ``reranker_eval``: one root, named subclasses.

::

    EvalError                root: catch this to handle every failure of the eval library
    ├── DatasetError         an input file is missing, unreadable or inconsistent (a usage error:
    │                        the message names the file and line and says what to fix)
    ├── DeploymentError      a deployment spec cannot be used (unknown scheme, bad address)
    └── ScoringError         a deployment failed while scoring (the client's error is chained)
"""

from __future__ import annotations


class EvalError(Exception):
    """Root of every error raised by ``reranker_eval``."""


class DatasetError(EvalError, ValueError):
    """The dataset cannot be read: missing files, bad records, unknown ids, nothing to evaluate."""


class DeploymentError(EvalError, ValueError):
    """A deployment spec names a transport or address this tool cannot use."""


class ScoringError(EvalError):
    """A deployment failed to score a query (the cause is the client's error, chained)."""
