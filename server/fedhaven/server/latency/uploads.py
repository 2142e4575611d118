"""Objects a message push announced that their sender has not uploaded yet; a pulled message waits for its own.

Flower sends a message in two steps: `push-messages` (the message without its
content; the SuperLink answers with the ids of the objects it lacks,
`objects_to_push`), then one `push-object` per array or record. A receiver
polling meanwhile (a SuperNode held by the Fleet gate and woken by that very
push, or the ServerApp pulling replies) gets the message at once, asks for its
objects, finds them "not available yet" and backs off Flower's full second
(`PULL_INITIAL_BACKOFF`), then two: measured on loopback, a train message of the
digits CNN reached its site about 1.5 s after the ServerApp pushed it, though
its objects were all uploaded within 0.5 s.

The gates note each push's `objects_to_push` here before the sender even sees
the answer, strike each object off as its `push-object` passes, and hold a
pulled message's answer until none of its objects is still on the way (at most
`settle` seconds per answer; then the receiver gets the answer and Flower's own
retries, as without fedhaven). Only a push-object Flower answered with 200
strikes an object off. Flower's requests and answers are
unchanged; only their timing is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

#: Seconds a pulled message waits, at most, for an object its sender announced (a large model upload takes longer;
#: then Flower's own backoff takes over). Below the SuperNode's 30 s HTTP timeout with a 10 s held pull.
DEFAULT_SETTLE = 10.0
#: Objects remembered at once; beyond this (a flood of announcements) new ones are not waited for.
MAX_PENDING = 100_000
log = logging.getLogger("fedhaven.server")


class Doorbell:
    """An event that the next ring sets, in one asyncio loop: the Runtime gate rings one when the ServerApp pushed
    something (held pulls wake up and ask again); `Uploads` rings its own when an object arrives."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def current(self) -> asyncio.Event:
        """The event the next ring sets (take it before looking, so no ring in between is missed)."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def ring(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()


class Uploads:
    """Announced-but-not-uploaded object ids, shared by the gates of one SuperLink (one asyncio loop)."""

    def __init__(self, *, settle: float = DEFAULT_SETTLE, max_pending: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if settle < 0 or max_pending < 0:
            raise ValueError("settle and max_pending must be >= 0")
        self.settle = settle
        self.max_pending = max_pending
        self._clock = clock
        self._pending: dict[str, float] = {}  # object id -> when nobody waits for it any more
        self._arrived = Doorbell()  # rung whenever an awaited object is uploaded
        self.waited = 0  # answers held until their objects were uploaded (tests and benchmarks)
        self.full_warned = False

    def __len__(self) -> int:
        return len(self._pending)

    def announced(self, object_ids: Iterable[str]) -> None:
        """A push's `objects_to_push`: the sender uploads these next."""
        if self.settle == 0:
            return
        now = self._clock()
        until = now + self.settle
        for oid in object_ids:
            if len(self._pending) >= self.max_pending:
                self._drop_expired(now)
                if len(self._pending) >= self.max_pending:
                    if not self.full_warned:
                        log.warning("upload table full (%d objects announced and not uploaded); pulled messages are "
                                    "answered without waiting until it drains", self.max_pending)
                        self.full_warned = True
                    return
            self._pending[oid] = until

    def uploaded(self, object_id: str) -> None:
        """Flower stored a `push-object` for this id."""
        if self._pending.pop(object_id, None) is not None:
            self._arrived.ring()

    def pending_among(self, object_ids: Iterable[str]) -> list[str]:
        """The ids among `object_ids` still on their way (expired ones are forgotten)."""
        now = self._clock()
        out = []
        for oid in object_ids:
            until = self._pending.get(oid)
            if until is None:
                continue
            if until <= now:
                del self._pending[oid]
            else:
                out.append(oid)
        return out

    async def wait_for(self, object_ids: Iterable[str]) -> float:
        """Return once none of `object_ids` is on its way any more, and never later than `settle` seconds from
        now (an object announced again and again does not extend it); seconds waited."""
        ids = list(object_ids)
        start = self._clock()
        deadline = start + self.settle
        waited = False
        while (pending := self.pending_among(ids)) and (left := deadline - self._clock()) > 0:
            waited = True
            left = min(left, max(self._pending[oid] for oid in pending) - self._clock())
            try:
                await asyncio.wait_for(self._arrived.current().wait(), timeout=max(0.0, min(left, 0.5)))
            except TimeoutError:
                pass
        self.waited += waited
        return self._clock() - start

    def _drop_expired(self, now: float) -> None:
        for oid in [o for o, until in self._pending.items() if until <= now]:
            del self._pending[oid]
