"""The public door's limits, in one description: `Limits` (the `[coordinator.limits]` table of server.toml), the
bytes-in-flight `Budget` and the per-key request `Rates`.

`Limits` carries the connection bounds `fedhaven.server.door_http` enforces below the application (connections per
source and in total, header size, deadlines, TLS handshakes), the body caps and the bytes-in-flight budget the
`Gate` enforces (`fedhaven.server.front`), and the per-node bounds its `NodeAuth` enforces (requests open at once;
a request rate per node, `Rates`). Its `bounds` are what `fl-server check` and `fl-server start` accept from an
operator (tests construct smaller doors directly).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from fedhaven.server.seam.wire import FLEET_PREFIX
from fedhaven.shared.config import bounds

#: The scope key under which a request's start (event-loop time of its first byte) reaches the Gate.
STARTED = "fedhaven.started"
#: Fleet calls whose bodies are a few fields (ids, a timestamp): a pull, a heartbeat, a confirmation, ...
SMALL_BODY = 64 << 10
#: A message push carries metadata and object trees (ids), never array contents; generous for many arrays.
PUSH_MESSAGES_BODY = 8 << 20
#: An object push carries one object of a message: Flower 1.42 cuts every array into chunks of at most 5 MB
#: (`FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`), so whatever the model's size no object is much larger; 16 MB leaves room.
DEFAULT_MAX_OBJECT = 16 << 20
DEFAULT_IN_FLIGHT = 256 << 20
#: Per registered node: requests per second, sustained, and the burst above it. An honest SuperNode with the
#: latency shims makes about one pull per message it receives (held at the door) and a heartbeat every ~20 s; its
#: bursts are the object transfers of a message (one request per object: a message, its records, each array and
#: array chunk; at most 2 at a time), a few dozen per message for fedhaven's models, so a few hundred per SecAgg+
#: round. Without the shims it pulls every 3 s. 50/s with a burst of 1000 leaves a wide margin for models of
#: hundreds of arrays; a node past it is answered 503 with Retry-After, on which Flower's SuperNode backs off and
#: retries (it gives up on a 429), and Flower never sees the request.
DEFAULT_NODE_RATE, DEFAULT_NODE_BURST = 50.0, 1000
#: Requests one node may have open at once inside Flower. An honest SuperNode has at most 3: its main loop's one
#: call (a held pull, or two object transfers at once), and its heartbeat. More is answered 503 with Retry-After
#: (retried), so that a stolen key cannot keep many of Flower's workers busy while honest sites wait behind them.
DEFAULT_PER_NODE = 8
#: TLS handshakes in progress at once (a P-384 handshake costs the coordinator about a millisecond of CPU; more
#: waiting at once only add latency), and new connections a second from one address, with their burst: an honest
#: SuperNode keeps its connections open and reconnects after a refusal or a dropped connection.
DEFAULT_HANDSHAKES, DEFAULT_SOURCE_RATE, DEFAULT_SOURCE_BURST = 64, 20.0, 200
#: Seconds past the read deadline after which the connection is closed under a Gate that has not answered 408.
GRACE = 1.0


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Every bound of one door. Sizes in bytes, times in seconds, rates in requests per second.

    The `bounds` are an operator's range (server.toml, `fl-server check`); a direct construction checks only that
    every bound is positive and the bounds agree with each other."""

    # an object push (the largest thing a site sends: one array chunk; Flower cuts arrays into 5 MB chunks)
    max_object: int = field(default=DEFAULT_MAX_OBJECT, metadata=bounds(ge=6_000_000, le=1_000_000_000))
    # request bodies held at once, all clients together
    in_flight: int = field(default=DEFAULT_IN_FLIGHT, metadata=bounds(ge=6_000_000, le=64_000_000_000))
    # the request line and headers (Flower's authentication headers take about 1 KB)
    max_header: int = field(default=16 << 10, metadata=bounds(ge=4096, le=1_000_000))
    # from a request's first byte (or the connection) to its last header
    header_timeout: float = field(default=10.0, metadata=bounds(gt=0, le=300))
    # from a request's first byte to its last body byte
    read_timeout: float = field(default=60.0, metadata=bounds(gt=0, le=3600))
    # open connections from one address (a reverse proxy in front counts as one address)
    per_source: int = field(default=64, metadata=bounds(ge=1, le=1_000_000))
    connections: int = field(default=1024, metadata=bounds(ge=1, le=1_000_000))  # open connections in total
    per_node: int = field(default=DEFAULT_PER_NODE, metadata=bounds(ge=4, le=100_000))  # requests open per node
    # a registered node's requests per second, sustained, and the burst it may make above that rate
    node_rate: float = field(default=DEFAULT_NODE_RATE, metadata=bounds(ge=1, le=1_000_000))
    node_burst: int = field(default=DEFAULT_NODE_BURST, metadata=bounds(ge=10, le=10_000_000))
    # TLS handshakes in progress at once, all addresses together (each is bounded by header_timeout)
    handshakes: int = field(default=DEFAULT_HANDSHAKES, metadata=bounds(ge=1, le=1_000_000))
    # new connections per second from one address, sustained, and the burst above it (a SuperNode keeps its
    # connections open; a reverse proxy in front counts as one address)
    source_rate: float = field(default=DEFAULT_SOURCE_RATE, metadata=bounds(ge=1, le=1_000_000))
    source_burst: int = field(default=DEFAULT_SOURCE_BURST, metadata=bounds(ge=1, le=10_000_000))

    def __post_init__(self) -> None:
        if problems := self.problems():
            raise ValueError("fedhaven limits: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every bound that is not positive, and every pair of bounds that contradict each other."""
        out = [f"{k} must be > 0 (got {getattr(self, k)!r})" for k in self.__dataclass_fields__
               if not getattr(self, k) > 0]
        if self.in_flight < self.max_object:
            out.append(f"in_flight ({self.in_flight}) must be at least max_object ({self.max_object}): raise "
                       f"in_flight or lower max_object")
        if self.header_timeout > self.read_timeout:
            out.append(f"header_timeout ({self.header_timeout:g}) must not exceed read_timeout "
                       f"({self.read_timeout:g})")
        return out

    def options(self) -> list[str]:
        """These limits as `python -m fedhaven.server.superlink` options (how `fl-server start` passes them)."""
        return [f"--{OPTION[name]}={getattr(self, name)}" for name in self.__dataclass_fields__]

    def body_cap(self, path: str) -> int:
        """The largest body a request to `path` may carry (the Runtime API's pushes are the model's objects too)."""
        name = path.rsplit("/", 1)[-1]
        if name == "push-object":
            return self.max_object
        if name == "push-messages":
            return max(PUSH_MESSAGES_BODY, SMALL_BODY)
        return SMALL_BODY if path.startswith(FLEET_PREFIX) else self.max_object


class Budget:
    """Bytes held at once by every request of a door; a chunk that would go past it is refused, never waited for."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            self.refused += 1
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Rates:
    """A token bucket per key: `rate` tokens a second up to `burst`; a request takes one.

    `wait` only looks (seconds until a token is there, 0 if one is), `take` takes one if there is one. Buckets
    exist only for keys something was taken for, and a bucket that has refilled is forgotten when many are held.
    """

    #: Buckets held before the full ones are forgotten (a full bucket is the same as none).
    PRUNE_AT = 4096

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, when counted)
        self._prune_at = self.PRUNE_AT

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def wait(self, key: Hashable) -> float:
        """Seconds until `key` has a token (0.0: it has one now); nothing is taken."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: Hashable) -> float:
        """Take a token of `key`: 0.0 if taken, else the seconds until one is there (nothing taken)."""
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self._prune_at:  # amortised: a scan only each time the buckets held double
            for k in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
                del self._buckets[k]
            self._prune_at = max(self.PRUNE_AT, 2 * len(self._buckets))
        return 0.0


def retry_after(seconds: float) -> bytes:
    """An HTTP Retry-After value (whole seconds, at least 1) for a wait of `seconds`."""
    return str(max(1, math.ceil(seconds))).encode()


#: `Limits` field -> the `fedhaven.server.superlink` option that sets it.
OPTION = {"max_object": "max-object", "in_flight": "max-in-flight", "max_header": "max-header",
          "header_timeout": "header-timeout", "read_timeout": "read-timeout",
          "per_source": "max-connections-per-source", "connections": "max-connections",
          "per_node": "max-node-requests", "node_rate": "node-rate", "node_burst": "node-burst",
          "handshakes": "max-handshakes", "source_rate": "source-rate", "source_burst": "source-burst"}
