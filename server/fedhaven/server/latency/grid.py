"""Flower's Grid with short, bounded waits: replies are pulled every fraction of a second, never longer than a timeout.

Flower's deployed grid (`HttpGrid.send_and_receive`) sleeps 3 s between pulls,
and waits forever when the timeout is None (what its default workflows pass).
A SecAgg+ round is four message rounds, so those sleeps alone cost several
seconds a round. This wrapper drives the same Grid through its push/pull calls:
it pulls after `poll_min` seconds, backing off to `poll_max` while nothing
arrives, and gives up after `timeout` seconds whatever the caller asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from flwr.app import Message
from flwr.serverapp import Grid

from fedhaven.server.attendance import Attendance
from fedhaven.server.delegating_grid import DelegatingGrid
from fedhaven.server.seam.simulation import partition_ids
from fedhaven.shared.text import printable

log = logging.getLogger("fedhaven.server")

#: Called while waiting: (seconds waited, node ids still missing).
WaitReport = Callable[[float, frozenset[int]], None]


def describe_nodes(grid: Grid, node_ids: Iterable[int] | None = None,
                   name_of: Callable[[int], str | None] | None = None) -> str:
    """`hospital-c (offline, last seen 40 s ago), 2 sites not named yet (online)`: what Flower knows of these sites,
    by name (the one registered with the SuperLink, else `name_of`'s: the name a site's replies gave); a site never
    heard from has no name yet, and Flower's node ids mean nothing to an operator, so those are only counted."""
    wanted = None if node_ids is None else set(node_ids)
    now = time.time()
    parts = []
    try:
        nodes = list(grid.get_nodes())
    except Exception:  # noqa: BLE001 - a report must never break the wait it reports on
        nodes = []
    unnamed: list[str] = []
    for n in nodes:
        if wanted is not None and n.node_id not in wanted:
            continue
        name = getattr(n, "name", "") or (name_of(n.node_id) if name_of is not None else None)
        status = getattr(n, "status", "") or "unknown"
        seen = _age(getattr(n, "last_activated_at", ""), now)
        if not name:
            unnamed.append(status)
            continue
        parts.append(f"{name} ({status}{f', last active {seen}' if seen else ''})")
    if unnamed:
        states = ", ".join(f"{unnamed.count(s)} {s}" for s in dict.fromkeys(unnamed))
        parts.append(f"{len(unnamed)} site(s) not named yet, as none has answered a round ({states})")
    if wanted is not None:
        lost = len(wanted - {n.node_id for n in nodes})
        if lost:
            parts.append(f"{lost} site(s) no longer connected")
    return ", ".join(parts) or "no sites known"


class PartitionNames:
    """A simulated site's name before it has answered: `fl-sim` knows its sites' names by partition (`site-01`, ...)
    and Flower's simulation which node holds which partition (`fedhaven.server.seam.simulation`).

    For display only (waits, the sites that never answered), never an identity: a name a site's reply gave wins,
    and should any answered node's name differ from the one its partition gives, these names are dropped for the
    rest of the run (the wait lines then count unnamed sites, as before).
    """

    def __init__(self, grid: Grid, names: Sequence[str]) -> None:
        self.grid, self.names = grid, tuple(names)
        self._nodes: dict[int, int] = {}  # node id -> partition id, once every site's node is known
        self._dropped = False

    def name_of(self, node: int, *, known: Callable[[int], str | None]) -> str | None:
        """The name of the site on `node` by its partition; `known` gives the names sites' replies gave."""
        nodes = self._partitions()
        if node not in nodes:
            return None
        for other, pid in nodes.items():
            reported = known(other)
            if reported is not None and reported != self.names[pid]:
                log.warning("simulated sites are no longer named by partition: the site on partition %d answered "
                            "as %s, not %s", pid, printable(reported, limit=80), self.names[pid])
                self._dropped, self._nodes = True, {}
                return None
        return self.names[nodes[node]]

    def _partitions(self) -> dict[int, int]:
        if self._dropped or self._nodes:
            return self._nodes
        try:
            found = partition_ids(self.grid.get_nodes())
        except Exception:  # noqa: BLE001 - a name must never break the wait it reports on
            return {}
        if len(found) == len(self.names):  # every partition's node registered: the order is complete
            self._nodes = found
        return self._nodes


def _age(stamp: str, now: float) -> str:
    from datetime import datetime

    try:
        return f"{now - datetime.fromisoformat(stamp).timestamp():.0f} s ago"
    except (TypeError, ValueError):
        return ""


class PollingGrid(DelegatingGrid):
    """Delegates to a Flower Grid; only `send_and_receive` is fedhaven's own."""

    def __init__(self, inner: Grid, *, timeout: float, poll_min: float = 0.05, poll_max: float = 0.2,
                 report_every: float = 30.0, on_wait: WaitReport | None = None) -> None:
        if timeout <= 0 or not 0 < poll_min <= poll_max:
            raise ValueError("PollingGrid needs timeout > 0 and 0 < poll_min <= poll_max")
        super().__init__(inner)
        self.timeout = timeout
        self.poll_min, self.poll_max = poll_min, poll_max
        self.report_every = report_every
        self.on_wait = on_wait
        self.attendance = Attendance()  # the current attempt's (the round loop starts a new one per attempt)

    # ----- fedhaven's wait -----
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push `messages`, then pull replies until all arrived or the (finite) timeout passed."""
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        node_of = dict(zip(ids, (m.metadata.dst_node_id for m in messages), strict=False))
        pending = {i for i in ids if i}
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        start = time.monotonic()
        next_report = start + self.report_every
        delay = self.poll_min
        replies: list[Message] = []
        while pending:
            got = list(self.inner.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending:
                break
            now = time.monotonic()
            if now - start >= limit:
                break
            if self.on_wait is not None and now >= next_report:
                self.on_wait(now - start, frozenset(node_of[i] for i in pending if i in node_of))
                next_report = now + self.report_every
            time.sleep(min(delay, max(0.0, limit - (now - start))))
            delay = self.poll_min if got else min(self.poll_max, delay * 1.5)
        self.attendance.contacted |= set(node_of.values())
        self.attendance.silent |= {node_of[i] for i in pending if i in node_of}
        return replies
