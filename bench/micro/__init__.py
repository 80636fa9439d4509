"""Micro-benchmarks (pytest-benchmark) of the switch's hot functions.

``python -m pytest bench/micro --benchmark-only`` runs them with pytest-benchmark's own report;
``python -m bench.micro`` runs them, prints a table (µs per operation, operations per second)
and writes the figures under ``bench/results/micro-<stamp>/``. The normal test command does not
collect this folder (``testpaths = ["tests"]``); ``tests/test_bench_smoke.py`` runs each body
once with ``--benchmark-disable`` so they cannot rot.
"""
