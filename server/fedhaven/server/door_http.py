"""The public door's connections under uvicorn: per source address and in total, header size, deadlines, TLS.

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
most `handshakes` are in progress at once, and each must end within `header_timeout`.
The numbers are `fedhaven.server.limits.Limits`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from typing import Any

from fedhaven.server.limits import GRACE, STARTED, Limits, Rates


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
