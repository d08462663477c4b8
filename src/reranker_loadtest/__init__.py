"""Locust load tests and the SLO gate (benchmarks live in ``reranker_bench``)."""
