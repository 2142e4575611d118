"""fedhaven's benchmarks (`make bench`, `make bench-quick`): measured side by side in one run, never in unit tests."""
