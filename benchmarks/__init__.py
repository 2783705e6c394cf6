"""Developer benchmarks (python -m benchmarks.<name>); not part of the package."""
