"""Benchmarks: `python -m bench [--quick] [--out FILE] [--device cpu|cuda]` (bench/__main__.py)."""
