"""Who may make the public door read a body: a registered SuperNode, with a fresh signature never seen before.

`NodeAuth.admit` decides from a request's headers alone (Flower's three SuperNode
authentication headers, `fedhaven.server.seam.fleet_auth`): the key must be one
registered with the SuperLink and not revoked, the signed time inside Flower's
window, the signature valid, and the (key, time) pair new, so a captured header
set cannot be replayed (Flower's SuperNode signs a fresh time on every call and
every retry). A caller that passes also holds at most `per_node` requests at
once (more: 503 with Retry-After, which Flower's SuperNode retries). Anything else
is answered by the door without reading the body; Flower then checks everything
again (and the body's node id) on what it is handed.

The registered keys are read from Flower's state in one query, at most once a
`refresh` seconds (and at most once a second on an unknown key), so an anonymous
caller never costs a database query of its own; a revoked key is let through to
Flower's own refusal for at most `refresh` seconds.

A registered node also makes at most `rate` requests a second, with bursts of up to
`burst` (`fedhaven.server.limits.Rates`, one bucket per node id); a request past that
is answered 503 with Retry-After, unread, and Flower never sees it (Flower's SuperNode
backs off and retries on a 503; a 429 would make it give up). Where the bucket is
checked is a choice against two attacks:

- anyone can *claim* any key in the headers, so a bucket that unverified claims drew
  from would let an attacker who knows a site's public key starve that site. Tokens
  are therefore only ever *taken* after the signature holds (and the signed time is
  new): only the holder of a key's private key can empty that key's bucket;
- but verifying an ECDSA signature is the costly part of a request a flooding key
  holder makes, so the bucket is first *looked at*, before the signature: an empty
  bucket is answered at once. That costs the claimed key nothing it had not already
  spent itself: the bucket is empty only because requests signed with that key took
  its tokens, so an unverified claim on an empty bucket is refused exactly when the
  key's holder would be. (A source-address pre-check was not chosen: behind a reverse
  proxy every caller has the proxy's address.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from fedhaven.server.limits import DEFAULT_NODE_BURST, DEFAULT_NODE_RATE, DEFAULT_PER_NODE, Rates
from fedhaven.server.seam.fleet_auth import OLDEST, claim_of, signature_holds

#: Signed times remembered per key (one per request inside Flower's 305 s window): a key past it has its
#: oldest times forgotten and every time up to the newest forgotten one refused.
SEEN_PER_KEY = 8192


@dataclass(frozen=True)
class Verdict:
    """`node` is the key's node id when admitted; otherwise `status` and `reason` say why not."""

    node: int | None
    status: int = 200
    reason: str = ""
    unknown_key: bool = False  # a well-formed claim by a key the coordinator does not know (or revoked)
    retry_after: float = 0.0  # seconds after which a node over its request rate has a token again


class NodeAuth:
    """Header-only admission of SuperNodes (see the module docstring); `release` when an admitted request ends."""

    def __init__(self, keys: Callable[[], Mapping[bytes, int]], *, refresh: float = 5.0,
                 per_node: int = DEFAULT_PER_NODE, rate: float = DEFAULT_NODE_RATE, burst: int = DEFAULT_NODE_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = keys
        self.refresh = refresh
        self.per_node = per_node
        self._clock = clock
        self.rates = Rates(rate=rate, burst=burst, clock=clock)
        self._known: Mapping[bytes, int] = {}
        self._read_at = -1e18
        self._seen: dict[bytes, OrderedDict[str, float]] = {}
        self._floor: dict[bytes, str] = {}
        self.busy: Counter[int] = Counter()
        self.refused: Counter[str] = Counter()

    async def admit(self, headers: Iterable[tuple[bytes, bytes]]) -> Verdict:
        claim = claim_of(headers)
        if isinstance(claim, str):
            return self._no(401, claim)
        node = await self._node_of(claim.public_key)
        if node is None:
            return replace(self._no(401, "unknown or revoked key"), unknown_key=True)
        if wait := self.rates.wait(node):  # looked at only: an empty bucket was emptied by the key's own holder
            return self._over_rate(wait)
        if self._replayed(claim.public_key, claim.timestamp):
            return self._no(401, "replayed authentication headers")
        if not signature_holds(claim):
            return self._no(401, "invalid signature")
        self._remember(claim.public_key, claim.timestamp)
        if wait := self.rates.take(node):  # signed by the key's holder: only now is a token taken
            return self._over_rate(wait)
        if self.busy[node] >= self.per_node:
            return replace(self._no(503, "too many requests in flight for this node"), retry_after=1.0)
        self.busy[node] += 1
        return Verdict(node)

    def release(self, node: int) -> None:
        self.busy[node] -= 1
        if self.busy[node] <= 0:
            del self.busy[node]

    def _over_rate(self, wait: float) -> Verdict:
        return replace(self._no(503, "too many requests from this node; retry later"), retry_after=wait)

    def _no(self, status: int, reason: str) -> Verdict:
        self.refused[reason] += 1
        return Verdict(None, status, reason)

    async def _node_of(self, key: bytes) -> int | None:
        now = self._clock()
        if now - self._read_at > self.refresh or (key not in self._known and now - self._read_at > 1.0):
            self._read_at = now  # before the read: callers meanwhile use the keys read last
            self._known = await asyncio.to_thread(self._keys)  # Flower's state is synchronous (SQLite)
        return self._known.get(key)

    def _replayed(self, key: bytes, stamp: str) -> bool:
        floor = self._floor.get(key)
        return stamp in self._seen.get(key, ()) or (floor is not None and stamp <= floor)

    def _remember(self, key: bytes, stamp: str) -> None:
        seen = self._seen.setdefault(key, OrderedDict())
        now = self._clock()
        seen[stamp] = now
        while seen and now - next(iter(seen.values())) > OLDEST:  # outside Flower's window: refused as stale anyway
            seen.popitem(last=False)
        while len(seen) > SEEN_PER_KEY:
            oldest, _ = seen.popitem(last=False)
            self._floor[key] = max(oldest, self._floor.get(key, oldest))
