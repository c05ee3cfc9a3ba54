"""Hand-run benchmarks (not tests). Run from the repository root: `python -m bench.<name> --help`."""
