"""Waits name every simulated site, also one that never answered: `fl-sim` knows its sites' names by partition and
Flower's simulation which node holds which partition (checked here against Flower's own node registration)."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import pytest
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager

from fedhaven.server.flower_legacy import LegacyFederation
from fedhaven.server.latency.grid import PartitionNames, describe_nodes
from fedhaven.server.seam.simulation import partition_ids

NAMES = [f"site-{i:02d}" for i in range(12)]


class _SimGrid:
    """What the ServerApp's grid answers in Flower's simulation: the link state's nodes in a set's order."""

    def __init__(self, count: int = len(NAMES)) -> None:
        factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
        self.mapping = _register_nodes(num_nodes=count, state_factory=factory)  # Flower's node id -> partition id
        self.state = factory.state()
        self.calls = 0

    def get_nodes(self):
        self.calls += 1
        ids = list(self.mapping)
        random.Random(self.calls).shuffle(ids)
        return self.state.get_node_info(node_ids=ids)


def test_the_registration_order_is_flowers_partition_order():
    grid = _SimGrid()
    for _ in range(3):  # whatever order the nodes come in
        assert partition_ids(grid.get_nodes()) == grid.mapping


def test_a_wait_names_simulated_sites_that_never_answered():
    grid = _SimGrid()
    names = PartitionNames(grid, NAMES)
    heard = {}  # node id -> the name its reply gave (none yet)
    text = describe_nodes(grid, set(grid.mapping), name_of=lambda n: heard.get(n) or names.name_of(n, known=heard.get))
    for node, pid in grid.mapping.items():
        assert f"{NAMES[pid]} (online" in text and str(node) not in text
    assert "not named yet" not in text and "node" not in text
    first = next(iter(grid.mapping))
    heard[first] = NAMES[grid.mapping[first]]  # a reply that agrees changes nothing
    assert names.name_of(first, known=heard.get) == NAMES[grid.mapping[first]]


def test_partition_names_are_dropped_when_a_reply_contradicts_them(caplog):
    grid = _SimGrid()
    names = PartitionNames(grid, NAMES)
    a, b = list(grid.mapping)[:2]
    heard = {a: NAMES[grid.mapping[b]]}  # the site on a's partition says it is b's
    with caplog.at_level(logging.WARNING, logger="fedhaven.server"):
        assert names.name_of(b, known=heard.get) is None
    assert "no longer named by partition" in caplog.text
    assert all(names.name_of(n, known=lambda _: None) is None for n in grid.mapping)  # for the rest of the run
    text = describe_nodes(grid, set(grid.mapping), name_of=lambda n: heard.get(n) or names.name_of(n, known=heard.get))
    assert f"{len(NAMES) - 1} site(s) not named yet" in text


def test_no_names_until_every_partitions_node_is_registered():
    grid = _SimGrid(count=3)
    names = PartitionNames(grid, NAMES[:4])  # one simulated node is missing: the order cannot be trusted yet
    assert all(names.name_of(n, known=lambda _: None) is None for n in grid.mapping)
    assert {names.name_of(n, known=lambda _: None) for n in grid.mapping} == {None}
    complete = PartitionNames(grid, NAMES[:3])
    assert sorted(complete.name_of(n, known=lambda _: None) for n in grid.mapping) == NAMES[:3]


@pytest.mark.parametrize("stamps", [["2026-12-06T10:00:00+00:00"] * 2, ["2026-12-06T10:00:00+00:00", ""],
                                    ["2026-12-06T10:00:00+00:00", "2026-12-06T10:00:01"]])
def test_stamps_that_cannot_order_the_nodes_give_no_partitions(stamps):
    nodes = [SimpleNamespace(node_id=i + 1, registered_at=s) for i, s in enumerate(stamps)]
    assert partition_ids(nodes) == {}
    assert partition_ids([SimpleNamespace(node_id=1)]) == {}


def test_a_round_names_a_silent_site_by_its_hint_and_a_node_id_only_without_one():
    fed = SimpleNamespace(known_name=lambda n: {1: "site-01"}.get(n), name_hint=lambda n: {2: "site-02"}.get(n))
    fed._name_or_hint = lambda n: LegacyFederation._name_or_hint(fed, n)  # what the exclusion check names by too
    assert [LegacyFederation._site_name(fed, n) for n in (1, 2, 3)] == ["site-01", "site-02", "node 3"]
    fed.name_hint = None  # deployment: registered names only
    assert LegacyFederation._site_name(fed, 2) == "node 2" and LegacyFederation._name_or_hint(fed, 2) is None
