"""Benchmark harness for ``bulk`` (not part of the installed package; see benchmarks/README.md)."""
