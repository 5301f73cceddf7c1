"""Benchmarks: `make bench` runs them and writes docs/BENCHMARKS.md and bench.json."""
