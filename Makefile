# fedhaven: `make sim` runs the default simulation, `make test` runs every test.
# Both create .venv with pip on first use (pip takes torch from the machine's local wheels;
# uv or poetry would download multi-GB CUDA builds instead).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedhaven-installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv sim lint test test-fast trust faults bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

sim: $(STAMP)
	$(VENV)/bin/fl-sim run mnist

# ruff over the whole tree; mypy --strict over the product packages (configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

test: $(STAMP)
	$(VENV)/bin/pytest -q -m "(not fault or fault_smoke) and not trust"

# The long loopback tests of site trust (systemd site, identity, SecAgg+ roster): about 5 minutes, kept out of
# `make test` so CI stays under 15 minutes; the in-process tests of the same checks run in `make test`.
trust: $(STAMP)
	$(VENV)/bin/pytest -q -m trust

# Every fault-injection test on real processes; writes RELIABILITY.md from this run.
faults: $(STAMP)
	$(VENV)/bin/pytest -q tests/faults --reliability RELIABILITY.md

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

# Benchmarks are not tests: they write BENCHMARKS.md, simulations/benchmarks/results-*.json and plots.
bench: $(STAMP)
	$(PY) -m fedhaven.sim.bench

bench-quick: $(STAMP)
	$(PY) -m fedhaven.sim.bench --quick

clean:
	rm -rf runs .pytest_cache
