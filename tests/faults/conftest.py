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


@pytest.fixture
def fed():
    """A fresh coordinator and three sites (each test breaks its own)."""
    f = LoopbackFederation.in_temp(prefix="fedhaven-faults-")
    try:
        f.start()
        yield f
    finally:
        f.stop()
