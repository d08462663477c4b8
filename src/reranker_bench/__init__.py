"""Benchmarks of this deployment and the reference stack they compare against (tooling, not product)."""
