"""Real and fake HTTP servers that the test suite and benchmarks run locally on 127.0.0.1."""
