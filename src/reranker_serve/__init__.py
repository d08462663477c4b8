"""Local Triton server launcher: runs the ``tritonserver`` bundled in ``nvidia-pytriton``."""

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

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_PORT",
    "SERVER_FLAGS",
    "ModelRepositoryError",
    "ServeError",
    "ServerStartError",
    "ServerTimeoutError",
    "TritonInstall",
    "TritonNotFoundError",
    "TritonServer",
    "find_triton",
    "free_port",
    "server_error",
]
