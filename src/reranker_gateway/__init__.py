"""HTTP rerank API (Cohere v1/v2, Jina, TEI schemas) in front of the reranker ensemble.

>>> from reranker_gateway import GatewaySettings, create_app
>>> app = create_app(GatewaySettings(triton_url="localhost:8001"))  # an ASGI app for uvicorn

``reranker-gateway --triton HOST:PORT`` runs it; docs/gateway.md describes the endpoints.
"""

from .app import create_app
from .settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
