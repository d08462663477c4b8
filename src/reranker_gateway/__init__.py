"""HTTP rerank API (Cohere v1/v2, Jina, TEI schemas) in front of the reranker ensemble."""
