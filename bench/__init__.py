"""Benchmarks that print their figures. Run all with ``make bench`` or one with ``python -m bench.NAME``."""
