"""Benchmarks, scoring and evaluation runs."""
