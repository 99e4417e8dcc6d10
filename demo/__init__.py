"""`make demo` and its digit classifiers; the tests and the benchmarks reuse the classifiers."""
