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

.PHONY: venv sim lint test console test-fast trust locate faults abuse bench bench-quick clean

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

# Two workers (pytest-xdist), each test file whole in one worker (the deployment tests' shared loopback federation
# starts at most once per worker; each worker its own Ray, tests/conftest.py).
test: $(STAMP)
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --durations=25 -m "(not fault or fault_smoke) and not trust and (not abuse or abuse_smoke) and not locate"

# The long loopback tests of site trust (systemd site, identity, SecAgg+ roster): about 5 minutes, kept out of
# `make test` so CI stays under 15 minutes; the in-process tests of the same checks run in `make test`.
trust: $(STAMP)
	$(VENV)/bin/pytest -q -m trust

# Locating a bad site inside a SecAgg+ sum end to end (fl-sim on digits with a NaN site) and the planner's full
# sweeps: a few minutes, kept out of `make test`; the planner's and the site's unit tests run in `make test`.
locate: $(STAMP)
	$(VENV)/bin/pytest -q -m locate

# Every fault-injection test on real processes; writes RELIABILITY.md from this run.
faults: $(STAMP)
	$(VENV)/bin/pytest -q tests/faults --reliability RELIABILITY.md

# Attacks on the coordinator's public Fleet port on loopback (and through the nginx front, if nginx is installed):
# about 10 minutes; writes ABUSE.md from this run.
abuse: $(STAMP)
	$(VENV)/bin/pytest -q tests/abuse --abuse ABUSE.md

# The operator console, metrics and probes alone (in `make test` too): in-process tests, then a loopback federation
# with one run that the console stops in headless Chromium (needs: apt-get install -y chromium chromium-driver).
console: $(STAMP)
	$(VENV)/bin/pytest -q tests/server/test_console.py tests/deploy/test_operator_probes.py \
		tests/deploy/test_console_browser.py

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

# Benchmarks are not tests: they write BENCHMARKS.md, simulations/benchmarks/results-*.json and plots.
bench: $(STAMP)
	$(PY) -m fedhaven.sim.bench

bench-quick: $(STAMP)
	$(PY) -m fedhaven.sim.bench --quick

clean:
	rm -rf runs .pytest_cache
