"""Benchmarks: `fraudctl bench ...` drives real services and prints one JSON line of figures."""
