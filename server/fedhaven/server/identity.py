"""A site is the name the operator registered for its authenticated node, never the name its reply reports.

A deployed site's SuperNode proves its key on every call, and the operator
registered that key under a name (`fl-server site add`). The site's reply also
says a name (its site.toml's); a site that reports another site's name would
otherwise take that site's place in the privacy report and its ledger witness.
The coordinator keys everything by the registered name and refuses a training
reply whose reported name differs: it is dropped before aggregation, the site
is listed with the reason, and what it spent is bounded like a lost reply's. In
simulation no node has a registered name, and the sites' own names are used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedhaven.server.seam.wire import node_names
from fedhaven.shared.text import printable

log = logging.getLogger("fedhaven.server")


@dataclass(frozen=True)
class Registered:
    """Node id -> registered site name, as the SuperLink knows them when a round starts."""

    names: tuple[tuple[int, str], ...] = ()

    @classmethod
    def of(cls, grid: Any) -> Registered:
        """The registered names of the grid's nodes (none in simulation, or when the SuperLink cannot say)."""
        try:
            return cls(tuple(sorted(node_names(grid.get_nodes()).items())))
        except Exception as exc:  # noqa: BLE001 - a name lookup must never break a round; names then stay unknown
            log.warning("could not read the sites' registered names (%s): using the names sites report",
                        printable(str(exc)))
            return cls()

    def name_of(self, node: int) -> str | None:
        return dict(self.names).get(node)

    def mismatch(self, *, node: int, reported: object) -> str | None:
        """Why a reply from `node` naming itself `reported` is refused, or None when the names agree (or the node
        has no registered name)."""
        registered = self.name_of(node)
        if registered is None or reported == registered:
            return None
        return (f"site {registered} (node {node}) reported the name {printable(str(reported), limit=80)!r}: its "
                f"update was refused (a site is named by the key it authenticates with; if its site.toml names it "
                f"otherwise, its IT sets name = \"{registered}\")")
