"""Typed gRPC client for the reranker ensemble."""
