"""Flower's simulation engine as `fl-sim` names its sites: which simulated node holds which partition (read only).

Flower's simulation registers its nodes one after another, node i holding partition i
(`vce_api._register_nodes`), and stamps each with `registered_at` when it is created
(`InMemoryLinkState.create_node`); `Grid.get_nodes()` hands those stamps to the ServerApp. The
order of the stamps is therefore the order of the partitions. Both facts are listed in the seam.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any


def partition_ids(nodes: Iterable[Any]) -> dict[int, int]:
    """Node id -> partition id for the nodes of a Flower simulation (`Grid.get_nodes()`), by order of registration;
    {} when the stamps cannot order them (one missing or unreadable, or two equal)."""
    stamped = []
    for n in nodes:
        try:
            stamped.append((datetime.fromisoformat(str(n.registered_at)), int(n.node_id)))
        except (AttributeError, TypeError, ValueError):
            return {}
    if len({t for t, _ in stamped}) != len(stamped):
        return {}
    try:
        ordered = sorted(stamped)
    except TypeError:  # stamps with and without a time zone
        return {}
    return {node: i for i, (_, node) in enumerate(ordered)}
