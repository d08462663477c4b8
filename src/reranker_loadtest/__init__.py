"""Locust load tests, SLO gate and benchmarks."""
