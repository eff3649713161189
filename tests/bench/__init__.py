"""Benchmarks (`make bench`): onnxsmith against the vendors' own tools, measured in the same run."""
