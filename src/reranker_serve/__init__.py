"""Local Triton server launcher: runs the ``tritonserver`` bundled in ``nvidia-pytriton``, and heals it."""

from .errors import (
    ModelRepositoryError,
    ServeError,
    ServerStartError,
    ServerTimeoutError,
    TritonNotFoundError,
)
from .server import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    SERVER_FLAGS,
    TritonInstall,
    TritonServer,
    find_triton,
    free_port,
    server_error,
)
from .supervisor import HealingError, HealingPolicy, Restart, RestartReason, Supervisor

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_PORT",
    "SERVER_FLAGS",
    "HealingError",
    "HealingPolicy",
    "ModelRepositoryError",
    "Restart",
    "RestartReason",
    "ServeError",
    "ServerStartError",
    "ServerTimeoutError",
    "Supervisor",
    "TritonInstall",
    "TritonNotFoundError",
    "TritonServer",
    "find_triton",
    "free_port",
    "server_error",
]
