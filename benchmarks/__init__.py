"""Side-by-side benchmarks: each compares two ways of doing the same work in one process run.

Run `python -m benchmarks.run [--quick] [--only 1,3]` (or `make bench`); see benchmarks/run.py.
"""
