"""Benchmarks: each measures ratios against baselines run in the same process and run."""
