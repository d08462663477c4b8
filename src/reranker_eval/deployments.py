"""Deployments under evaluation: anything that scores a query's candidates.

A deployment is named by a spec, ``[NAME=]ADDRESS``: ``fp32=localhost:8001``,
``int8=grpc://reranker-int8.search.svc:8001``, ``dns:///reranker-headless:8001``. gRPC is the one
transport today (the ``reranker`` ensemble through ``reranker_client``); an HTTP deployment (the
gateway, not built yet) is one more class with the same two methods and one more scheme in
:func:`open_deployment`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .errors import DeploymentError

__all__ = ["Deployment", "DeploymentSpec", "GrpcDeployment", "open_deployment", "parse_deployment"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@runtime_checkable
class Deployment(Protocol):
    """Scores documents for a query; safe to call from several threads at once."""

    @property
    def name(self) -> str:
        """How the report calls it."""
        ...

    @property
    def address(self) -> str:
        """Where it is, for the report (``reranker@grpc://host:port``: the model at the server)."""
        ...

    def wait_until_ready(self, timeout: float) -> None:
        """Return once it can score; raise (``reranker_client.RerankerError``) when ``timeout`` passes first."""
        ...

    def score(self, query: str, documents: Sequence[str]) -> npt.NDArray[np.floating]:
        """One score per document, in input order (higher is more relevant)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    scheme: str
    """``grpc`` today."""
    address: str
    """The transport's own target (``host:port``, ``dns:///host:port``)."""
    model: str = "reranker"


def parse_deployment(spec: str, *, model: str = "reranker") -> DeploymentSpec:
    """``[NAME=]ADDRESS`` -> spec; the name defaults to the address as written."""
    name, sep, address = spec.partition("=")
    if not sep:
        name, address = spec, spec
    name, address = name.strip(), address.strip()
    if not address:
        raise DeploymentError(f"deployment {spec!r}: no address (expected [NAME=]HOST:PORT)")
    if sep and not _NAME.fullmatch(name):
        raise DeploymentError(f"deployment {spec!r}: the name may use letters, digits, '.', '_' and '-'")
    scheme, has_scheme, rest = address.partition("://")
    if not has_scheme:
        scheme, rest = "grpc", address
    if scheme in ("http", "https"):
        raise DeploymentError(
            f"deployment {spec!r}: HTTP deployments are not supported yet; "
            "give the gRPC address, HOST:PORT, of the Triton (behind the gateway, if there is one)"
        )
    if scheme == "dns":
        rest = address  # gRPC's own resolver syntax, dns:///host:port: keep it whole
    elif scheme != "grpc":
        raise DeploymentError(
            f"deployment {spec!r}: unknown scheme {scheme!r} (expected HOST:PORT or grpc://HOST:PORT)"
        )
    if not rest:
        raise DeploymentError(f"deployment {spec!r}: no address after {scheme}://")
    return DeploymentSpec(name=name, scheme="grpc", address=rest, model=model)


class GrpcDeployment:
    """The ``reranker`` ensemble on Triton, through ``reranker_client.RerankerClient``.

    The client splits a candidate list longer than the server's document limit into several
    requests and merges the scores, so any rerank depth works.
    """

    def __init__(self, spec: DeploymentSpec, *, timeout: float = 60.0) -> None:
        from reranker_client import RerankerClient

        self._spec = spec
        self._client = RerankerClient(spec.address, model=spec.model, timeout=timeout)

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def address(self) -> str:
        target = self._spec.address
        return f"{self._spec.model}@{target if target.startswith('dns:') else 'grpc://' + target}"

    def score(self, query: str, documents: Sequence[str]) -> npt.NDArray[np.floating]:
        return self._client.score(query, documents)

    def wait_until_ready(self, timeout: float) -> None:
        self._client.wait_until_ready(timeout=timeout)

    def close(self) -> None:
        self._client.close()


def open_deployment(spec: DeploymentSpec, *, timeout: float = 60.0) -> Deployment:
    """A connected deployment for ``spec`` (only gRPC today)."""
    if spec.scheme == "grpc":
        return GrpcDeployment(spec, timeout=timeout)
    raise DeploymentError(f"deployment {spec.name!r}: no transport for scheme {spec.scheme!r}")
