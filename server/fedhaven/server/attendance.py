"""A fit attempt's attendance: which sites were sent what and how each answered, one record per attempt.

The grid writes it as messages go out and replies come back (`latency.grid.PollingGrid`:
contacted, silent; the round's reply watch: asked to train, settled); the round loop,
the recorder and the client manager read it: who may have trained without a reply
(their spending is only bounded), and who went silent (not sampled again at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Attendance:
    """Nodes of one fit attempt, by what happened to them."""

    contacted: set[int] = field(default_factory=set)  # sent any message
    asked: set[int] = field(default_factory=set)  # sent a training task
    settled: set[int] = field(default_factory=set)  # answered a task with an update, or refused it (nothing spent)
    silent: set[int] = field(default_factory=set)  # no reply before a stage's timeout

    @property
    def unanswered(self) -> list[int]:
        """Asked to train, never settled: may have trained and recorded it."""
        return sorted(self.asked - self.settled)
