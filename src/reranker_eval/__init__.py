"""Ranking quality of reranker deployments on a user's own data (BEIR or JSONL)."""
