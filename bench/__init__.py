"""Benchmarks: `make bench` (see README, "Benchmark")."""
