"""The coordinator's TCP doors: each admits one of Flower's APIs (Fleet for sites, Runtime for the executor), bounded.

`Gate` wraps Flower's SuperLink application (same process, no proxy hop): a
request whose path is not under its prefix is answered 403 (the Control API
above all, which Flower 1.42's open-source edition serves without user
authentication); a body above `max_body` gets 413; a client that stalls
mid-request for `read_timeout` seconds gets 408; garbage gets uvicorn's 400.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

FLEET_PREFIX = "/v1/fleet/"
RUNTIME_PREFIX = "/v1/runtime/"
REFUSAL = (b"fedhaven: only Flower's Fleet API (/v1/fleet/) is served here. The Control API is served to the "
           b"operator's account on the coordinator host only.\n")
DEFAULT_MAX_BODY = 256 << 20  # a model push of a few hundred MB is the largest thing a site sends

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    pass


class Gate:
    """ASGI middleware: passes HTTP requests under `prefix` (body read whole, bounded) to `app`, refuses the rest."""

    def __init__(self, app: ASGIApp, *, prefix: str, max_body: int = DEFAULT_MAX_BODY,
                 read_timeout: float = 60.0) -> None:
        self.app = app
        self.prefix = prefix
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the app's own lifespan runs once, on the operator's socket
            while True:
                event = await receive()
                kind = event["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(self.prefix) or ".." in path or "//" in path:
            self.refused += 1
            await respond(send, 403, REFUSAL)
            return
        try:
            body = await self._body(receive)
        except _TooLarge:
            await respond(send, 413, f"fedhaven: request body above {self.max_body} bytes\n".encode())
            return
        except TimeoutError:
            await respond(send, 408, b"fedhaven: the request body did not arrive in time\n")
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then whatever the client does next (a disconnect)

        await self.app(scope, replay, send)

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await asyncio.wait_for(receive(), timeout=self.read_timeout)
            if event["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = headers if headers is not None else [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
