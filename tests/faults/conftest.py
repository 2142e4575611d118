"""Fault injection on real processes: a fresh loopback federation per test, and the RELIABILITY.md record.

`make faults` runs every test here and writes RELIABILITY.md (`--reliability PATH`): for each fault, what was
expected, what was observed in that run, and how long it took. `make test` runs the tests marked `fault_smoke`.
"""

from __future__ import annotations

import pytest

from fedhaven.sim.loopback import LoopbackFederation


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.fault)


#: The sites' own policy in these tests: each accepts a SecAgg+ round of two sites with one neighbour (the default
#: policy asks for three sites and two neighbours), so that a round can go on without the site a test breaks.
#: A site that accepts a 2-site sum can subtract its own update from it: a choice only a site's policy makes.
DROPOUT_POLICY = "max_epsilon = 50.0\nmin_noise_multiplier = 0.5\nmin_sites = 2\nsecagg_min_neighbours = 1"


@pytest.fixture
def fed():
    """A fresh coordinator and three sites that go on with two (each test breaks its own)."""
    f = LoopbackFederation.in_temp(prefix="fedhaven-faults-", policy=DROPOUT_POLICY)
    try:
        f.start()
        yield f
    finally:
        f.stop()
