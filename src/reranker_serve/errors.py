"""Errors of the local Triton launcher: one root, named subclasses."""

from __future__ import annotations

from pathlib import Path


class ServeError(Exception):
    """Root of every error raised by ``reranker_serve``."""


class TritonNotFoundError(ServeError):
    """The ``nvidia-pytriton`` wheel (which bundles ``tritonserver``) is missing or incomplete."""


class ModelRepositoryError(ServeError):
    """The model repository path does not exist or is not a directory."""


class ServerStartError(ServeError):
    """``tritonserver`` exited, or a model failed to load, before the server became ready.

    ``server_error`` is the server's own error line (log prefix and backtrace removed),
    ``log_path`` the full server log, ``returncode`` the exit status when the process had exited.
    """

    def __init__(self, server_error: str, *, log_path: Path, returncode: int | None = None) -> None:
        super().__init__(f"{server_error} (server log: {log_path})")
        self.server_error = server_error
        self.log_path = log_path
        self.returncode = returncode


class ServerTimeoutError(ServeError):
    """The server did not report ready within the startup timeout."""

    def __init__(self, message: str, *, log_path: Path) -> None:
        super().__init__(f"{message} (server log: {log_path})")
        self.log_path = log_path
