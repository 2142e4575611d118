"""The public door's bounds below the application: connections per source and in total, header size, deadlines.

uvicorn (0.49, httptools parser) bounds none of these: it accepts every connection, reads
headers of any size (its `h11_max_incomplete_event_size` applies to the h11 parser only)
and waits forever for a client that sends a request line and stalls. `guarded_http`
returns uvicorn's own httptools protocol class with these checks added at the three
points where uvicorn decides (connection made, bytes received, parser events), so the
HTTP parsing stays uvicorn's; nothing here reads a body. `Limits` also carries the
body caps and the bytes-in-flight budget the `Gate` enforces (`fedhaven.server.front`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fedhaven.server.seam.wire import FLEET_PREFIX

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
#: Seconds past the read deadline after which the connection is closed under a Gate that has not answered 408.
GRACE = 1.0


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Every bound of one door. Sizes in bytes, times in seconds."""

    max_object: int = DEFAULT_MAX_OBJECT  # an object push (the largest thing a site sends: one array chunk)
    in_flight: int = DEFAULT_IN_FLIGHT  # request bodies held at once, all clients together
    max_header: int = 16 << 10  # the request line and headers
    header_timeout: float = 10.0  # from a request's first byte (or the connection) to its last header
    read_timeout: float = 60.0  # from a request's first byte to its last body byte
    per_source: int = 64  # open connections from one address
    connections: int = 1024  # open connections in total

    def __post_init__(self) -> None:
        problems = [f"{k} must be > 0 (got {getattr(self, k)!r})" for k in self.__dataclass_fields__
                    if not getattr(self, k) > 0]
        if self.in_flight < self.max_object:
            problems.append(f"in_flight ({self.in_flight}) must be at least max_object ({self.max_object})")
        if self.header_timeout > self.read_timeout:
            problems.append("header_timeout must not exceed read_timeout")
        if problems:
            raise ValueError("fedhaven limits: " + "; ".join(problems))

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


class Connections:
    """Open connections of one door, per source address and in total (what `guarded_http` admits)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.by_source: Counter[str] = Counter()
        self.open = 0
        self.refused = 0
        self.expired = 0  # closed at a header or request deadline
        self.too_large = 0  # closed for headers above max_header

    def admit(self, source: str) -> bool:
        if self.open >= self.limits.connections or self.by_source[source] >= self.limits.per_source:
            self.refused += 1
            return False
        self.open += 1
        self.by_source[source] += 1
        return True

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


def guarded_http(limits: Limits, table: Connections) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with `limits` enforced below the application (pass as `uvicorn.Config(http=)`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Guarded(HttpToolsProtocol):
        _source = ""
        _admitted = False
        _header_bytes = 0
        _in_headers = True  # the bytes arriving now belong to a request line or headers
        _timer: asyncio.TimerHandle | None = None
        _started = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self._source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if not table.admit(self._source):
                transport.abort()  # over a connection cap: not even a byte is read
                return
            self._admitted = True
            super().connection_made(transport)
            self._arm(limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._admitted:
                return
            self._admitted = False
            table.leave(self._source)
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._admitted or self.transport.is_closing():
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


def uvicorn_options(limits: Limits, table: Connections) -> dict[str, Any]:
    """`uvicorn.Config` keyword arguments of a door guarded by `limits`."""
    return {"http": guarded_http(limits, table), "timeout_keep_alive": 30}
