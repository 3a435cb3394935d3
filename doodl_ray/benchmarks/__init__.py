"""Benchmarks behind `doodl-ray bench`; each prints a table and, with --json, one JSON line."""
