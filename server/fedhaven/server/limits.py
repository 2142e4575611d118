"""The public door's bounds below the application: connections per source and in total, header size, deadlines.

uvicorn (0.49, httptools parser) bounds none of these: it accepts every connection, reads
headers of any size (its `h11_max_incomplete_event_size` applies to the h11 parser only)
and waits forever for a client that sends a request line and stalls. `guarded_http`
returns uvicorn's own httptools protocol class with these checks added at the three
points where uvicorn decides (connection made, bytes received, parser events), so the
HTTP parsing stays uvicorn's; nothing here reads a body.

TLS: given to uvicorn, the handshake would happen before the protocol sees the
connection (asyncio's server calls `connection_made` only once it is done), so no cap
would count a connection still in its handshake, and a client that never sends its
hello would hold a socket for asyncio's 60 s. With `tls`, the door itself is served
without TLS by uvicorn and `guarded_http` starts TLS on each admitted connection
(`loop.start_tls`, the same machinery): the connection caps and a per-address rate of
new connections (`source_rate`, `source_burst`) apply before any handshake work, at
most `handshakes` are in progress at once, and each must end within `header_timeout`. `Limits` also carries the
body caps and the bytes-in-flight budget the `Gate` enforces (`fedhaven.server.front`), and
the per-node bounds its `NodeAuth` enforces (requests open at once; a request rate per node,
`Rates`). `Limits` is also the `[coordinator.limits]` table of server.toml: its `bounds` are
what `fl-server check` and `fl-server start` accept from an operator (tests construct smaller
doors directly).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

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


class Connections:
    """Open connections of one door, per source address and in total (what `guarded_http` admits)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.by_source: Counter[str] = Counter()
        self.rates = Rates(rate=limits.source_rate, burst=limits.source_burst)
        self.open = 0
        self.handshaking = 0  # TLS handshakes in progress
        self.refused = 0
        self.too_fast = 0  # refused for new connections past source_rate
        self.expired = 0  # closed at a header or request deadline
        self.too_large = 0  # closed for headers above max_header
        self.failed_handshakes = 0  # TLS handshakes that failed, stalled or were refused for the handshake cap

    def admit(self, source: str) -> bool:
        if self.open >= self.limits.connections or self.by_source[source] >= self.limits.per_source:
            self.refused += 1
            return False
        if self.rates.take(source):
            self.too_fast += 1
            return False
        self.open += 1
        self.by_source[source] += 1
        return True

    def handshake_begins(self) -> bool:
        if self.handshaking >= self.limits.handshakes:
            self.failed_handshakes += 1
            return False
        self.handshaking += 1
        return True

    def handshake_ends(self) -> None:
        self.handshaking -= 1

    def leave(self, source: str) -> None:
        self.open -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]


def _plain(status: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: "
            + str(len(text)).encode() + b"\r\n\r\n" + text)


TOO_LARGE = _plain(b"431 Request Header Fields Too Large", b"fedhaven: request headers above the limit\n")
TIMED_OUT = _plain(b"408 Request Timeout", b"fedhaven: the request did not arrive in time\n")


def guarded_http(limits: Limits, table: Connections, tls: ssl.SSLContext | None = None) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with `limits` enforced below the application (pass as `uvicorn.Config(http=)`);
    with `tls`, the protocol runs each connection's TLS handshake itself, bounded (uvicorn is then given no TLS)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Guarded(HttpToolsProtocol):
        _source = ""
        _admitted = False
        _http = False  # uvicorn's side of the connection is made (after the TLS handshake, with `tls`)
        _early: list[bytes] | None = None  # bytes decrypted before the handshake's end reached `_secure`
        _handshake: asyncio.Task[None] | None = None
        _header_bytes = 0
        _in_headers = True  # the bytes arriving now belong to a request line or headers
        _timer: asyncio.TimerHandle | None = None
        _started = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if tls is not None and not isinstance(self.loop, asyncio.BaseEventLoop):
                transport.abort()
                raise RuntimeError(_LOOP_NEEDED)
            peer = transport.get_extra_info("peername")
            self._source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if not table.admit(self._source):
                transport.abort()  # over a connection cap or rate: not even a byte is read
                return
            self._admitted = True
            if tls is None:
                self._open(transport)
            elif not table.handshake_begins():
                self.connection_lost(None)
                transport.abort()  # too many handshakes in progress: no handshake work at all
            else:
                transport.pause_reading()  # until the handshake takes the connection over (start_tls resumes it)
                self._handshake = self.loop.create_task(self._secure(transport, tls))

        async def _secure(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
            try:
                secured = await self.loop.start_tls(raw, self, context, server_side=True,
                                                    ssl_handshake_timeout=limits.header_timeout)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError):  # failed, stalled, gone
                secured = None
            finally:
                table.handshake_ends()
            if secured is None or not self._admitted:
                table.failed_handshakes += secured is None
                self.connection_lost(None)
                raw.abort()
                return
            self._open(secured)

        def _open(self, transport: asyncio.Transport) -> None:
            self._http = True
            super().connection_made(transport)
            self._arm(limits.header_timeout)
            early, self._early = self._early, None
            for data in early or ():
                self.data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._admitted:
                return
            self._admitted = False
            table.leave(self._source)
            self._disarm()
            if self._handshake is not None and not self._handshake.done():
                self._handshake.cancel()
            if self._http:
                super().connection_lost(exc)

        def eof_received(self) -> None:
            if self._http:
                super().eof_received()

        def pause_writing(self) -> None:  # uvicorn's flow control exists once its side is made
            if self._http:
                super().pause_writing()

        def resume_writing(self) -> None:
            if self._http:
                super().resume_writing()

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            if not self._http:  # asyncio hands over bytes that came with the handshake's end before start_tls returns
                self._early = [*(self._early or []), data]
                return
            if self.transport.is_closing():
                return
            if self._in_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._in_headers and self._header_bytes > limits.max_header:
                table.too_large += 1
                self._refuse(TOO_LARGE)

        # parser events: a request begins, its headers end, it ends
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._started = self.loop.time()
            self.scope[STARTED] = self._started  # type: ignore[literal-required]  # an extension key for the Gate
            self._in_headers = True
            self._arm(limits.header_timeout)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._arm(self._started + limits.read_timeout + GRACE - self.loop.time())  # the Gate answers 408 first
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            self._in_headers = True
            self._header_bytes = 0
            super().on_message_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(max(0.0, seconds), self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self.transport is None or self.transport.is_closing():
                return
            table.expired += 1
            if self.cycle is None or self.cycle.response_complete:
                self._refuse(TIMED_OUT)
            else:  # the Gate is reading this body and answers 408 itself first; if not, the client is let go
                self.transport.close()

        def _refuse(self, answer: bytes) -> None:
            self._disarm()
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(answer)
            self.transport.close()

    return Guarded


def uvicorn_options(limits: Limits, table: Connections, *, certfile: str | None = None,
                    keyfile: str | None = None) -> dict[str, Any]:
    """`uvicorn.Config` keyword arguments of a door guarded by `limits`, serving TLS with `certfile` and `keyfile`
    (its handshakes bounded by the door, see the module docstring)."""
    if not certfile:
        return {"http": guarded_http(limits, table), "timeout_keep_alive": 30}
    return {"http": guarded_http(limits, table, server_context(certfile, keyfile)), "timeout_keep_alive": 30,
            "loop": "asyncio"}  # see _LOOP_NEEDED


#: Why a door with its own TLS runs on asyncio's event loop: a protocol's `pause_reading` in `connection_made` keeps
#: the client's first TLS bytes in the socket until `start_tls` takes the connection over; uvloop (0.23) may hand
#: them to the protocol first (measured: 6 of 40 handshakes lost), asyncio never does.
_LOOP_NEEDED = ("fedhaven's door runs its TLS handshakes on asyncio's own event loop (uvicorn loop='asyncio'; "
                "`fedhaven.server.superlink` serves its doors under asyncio.run)")


def server_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """The door's TLS: Python's defaults for a server (TLS 1.2 or later), the coordinator's certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


#: `Limits` field -> the `fedhaven.server.superlink` option that sets it.
OPTION = {"max_object": "max-object", "in_flight": "max-in-flight", "max_header": "max-header",
          "header_timeout": "header-timeout", "read_timeout": "read-timeout",
          "per_source": "max-connections-per-source", "connections": "max-connections",
          "per_node": "max-node-requests", "node_rate": "node-rate", "node_burst": "node-burst",
          "handshakes": "max-handshakes", "source_rate": "source-rate", "source_burst": "source-burst"}
