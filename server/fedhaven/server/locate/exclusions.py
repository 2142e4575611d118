"""Sites located as bad inside a masked sum, left out for the rest of the run: kept in the coordinator's checkpoints.

A located site is known by its name (the one it is registered under when the
coordinator authenticates sites, else the one its replies gave) and by the node
it answered from. A resumed run leaves out every node whose name is one of them
or, while its name is not known yet, that is the very node it was located on
(a deployed site keeps its node across a coordinator restart). A resumed
simulation has new nodes: `fl-sim` names them by partition before they answer
(`fedhaven.server.latency.grid.PartitionNames`), so a located simulated site is
left out from the resumed run's first round.

Each exclusion keeps its evidence: the round, the guard's reason for rejecting
that round's sum, and every re-masked group (by site names) with its verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Exclusion", "Exclusions"]


@dataclass(frozen=True)
class Exclusion:
    """One located site: when, on which node, and why (the rejected sum and the groups that pointed at it)."""

    site: str
    server_round: int
    node: int
    reason: str  # the guard's verdict on the round's full sum
    groups: tuple[tuple[tuple[str, ...], bool], ...] = ()  # (group's sites, its sum passed?) in the order unmasked

    def to_blob(self) -> dict[str, Any]:
        """Plain values only (a checkpoint is read back without unpickling code)."""
        return {"site": self.site, "round": self.server_round, "node": self.node, "reason": self.reason,
                "groups": [{"sites": list(g), "passed": ok} for g, ok in self.groups]}

    @classmethod
    def from_blob(cls, d: dict[str, Any]) -> Exclusion:
        """Raises ValueError on anything but what `to_blob` wrote."""
        if not isinstance(d, dict) or not isinstance(d.get("site"), str) or not d["site"]:
            raise ValueError(f"an exclusion without a site name: {str(d)[:80]}")
        groups = d.get("groups", [])
        if not isinstance(groups, list) or not all(
                isinstance(g, dict) and isinstance(g.get("sites"), list) and isinstance(g.get("passed"), bool)
                and all(isinstance(s, str) for s in g["sites"]) for g in groups):
            raise ValueError(f"the exclusion of {d['site']} has malformed groups")
        for key, kind in (("round", int), ("node", int), ("reason", str)):
            if not isinstance(d.get(key), kind) or isinstance(d.get(key), bool):
                raise ValueError(f"the exclusion of {d['site']} has no valid {key!r}")
        return cls(site=d["site"], server_round=d["round"], node=d["node"], reason=d["reason"],
                   groups=tuple((tuple(g["sites"]), g["passed"]) for g in groups))

    def summary(self) -> str:
        with_it = [ok for g, ok in self.groups if self.site in g]
        without = [ok for g, ok in self.groups if self.site not in g]
        return (f"{self.site} (located in round {self.server_round}: {with_it.count(False)} of {len(with_it)} "
                f"re-masked group(s) with it failed, {without.count(True)} of {len(without)} without it passed)")


class Exclusions:
    """The run's located sites, by name (the first location of a site is kept)."""

    def __init__(self, items: Iterable[Exclusion] = ()) -> None:
        self.by_site: dict[str, Exclusion] = {}
        for e in items:
            self.by_site.setdefault(e.site, e)

    def __bool__(self) -> bool:
        return bool(self.by_site)

    def add(self, *, site: str, server_round: int, node: int, reason: str,
            groups: Sequence[tuple[Sequence[str], bool]]) -> Exclusion:
        e = Exclusion(site=site, server_round=server_round, node=node, reason=reason,
                      groups=tuple((tuple(g), ok) for g, ok in groups))
        return self.by_site.setdefault(site, e)

    def left_out(self, *, node: int, name: str | None) -> bool:
        """Whether `node` (known as `name`, None while unknown) is one of the located sites."""
        if name is not None:
            return name in self.by_site
        return any(e.node == node for e in self.by_site.values())

    def predicate(self, name_of: Callable[[int], str | None]) -> Callable[[str], bool]:
        """For the client manager: Flower's client id (the node id as text) -> left out?"""
        def left_out(cid: str) -> bool:
            if not self.by_site:
                return False
            try:
                node = int(cid)
            except ValueError:
                return False
            return self.left_out(node=node, name=name_of(node))
        return left_out

    def to_blob(self) -> list[dict[str, Any]]:
        return [e.to_blob() for e in self.by_site.values()]

    @classmethod
    def from_blob(cls, rows: object) -> Exclusions:
        """A checkpoint's exclusions (a checkpoint written before they were kept has none); ValueError when
        malformed."""
        if rows is None:
            return cls()
        if not isinstance(rows, list):
            raise ValueError("the checkpoint's exclusions are not a list")
        return cls(Exclusion.from_blob(r) for r in rows)
