"""The coordinator's TCP doors: each admits one of Flower's APIs (Fleet for sites, Runtime for the executor), bounded.

`Gate` wraps Flower's SuperLink application (same process, no proxy hop): a
request whose path is not under its prefix is answered 403 (the Control API
above all, which Flower 1.42's open-source edition serves without user
authentication); garbage gets uvicorn's 400.

Nothing is read before it is allowed: with `auth` (`fedhaven.server.gate_auth`),
a Fleet request whose headers do not carry a registered SuperNode's fresh,
unreplayed signature is answered 401 (a node with too many requests open, or over
its request rate, 503 with Retry-After) before a byte of its body is read;
a declared body above its path's cap (`Limits.body_cap`) gets 413 unread, and a
body that grows past it 413 at once; a
body that would take the door past its budget of bytes in flight gets 503; a
request still incomplete `read_timeout` seconds after its first byte gets 408
(`fedhaven.server.limits` bounds headers and connections below this). Every
refusal closes the connection. A body cut short by the client is dropped, never
handed to Flower.

Held pulls: Flower's SuperNode asks for a message and, finding none, sleeps 3 s
before asking again; a SecAgg+ round is four such exchanges, so most of a
deployed round used to be that sleep. The Fleet gate holds a SuperNode's empty
`pull-messages` for up to `hold` seconds and asks Flower's app again whenever the
Runtime gate passes a ServerApp push (a `Doorbell`), so a message reaches its site
as soon as it exists. Flower's request and answer are unchanged: the site gets
exactly what the SuperLink answers, only later when it had nothing to say.

Settled answers: with `uploads` (`fedhaven.server.latency.uploads`), both gates note the
objects each message push announces and hold a pulled message's answer until its
objects are uploaded, so neither a SuperNode nor the ServerApp backs off
Flower's full second for objects still on their way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fedhaven.server.gate_auth import NodeAuth, Verdict
from fedhaven.server.latency.uploads import Doorbell, Uploads
from fedhaven.server.limits import STARTED, Budget, Limits, retry_after
from fedhaven.server.seam.wire import (
    ACTIVATE_NODE_PATH,
    ACTIVATION_FAILED_CODE,
    FLEET_PREFIX,
    OBJECT_PUSH_PATHS,
    PULL_PATH,
    PULL_PATHS,
    PUSH_PATHS,
    RING_PATHS,
    RUNTIME_PREFIX,
    is_empty_pull,
    objects_to_push,
    pulled_object_ids,
    pulling_node,
    pushed_object_id,
)

__all__ = ["FLEET_PREFIX", "RUNTIME_PREFIX", "Gate", "pushed_object_id"]

REFUSAL = (b"fedhaven: only Flower's Fleet API (/v1/fleet/) is served here. The Control API is served to the "
           b"operator's account on the coordinator host only.\n")
CLOSE = [(b"content-type", b"text/plain"), (b"connection", b"close")]
CLOSE_JSON = [(b"content-type", b"application/json"), (b"connection", b"close")]
#: Seconds a SuperNode's empty pull is held (its HTTP client gives up after 30 s) and, while held, how often Flower's
#: app is asked again without a ring.
DEFAULT_HOLD, RECHECK = 10.0, 0.5
#: Pulls held at once, whatever the number of sites (more are answered at once, as Flower would).
MAX_HELD = 4096

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class _Truncated(Exception):
    pass


class Gate:
    """ASGI middleware: passes HTTP requests under `prefix` (body read whole, bounded) to `app`, refuses the rest.

    `limits` bounds bodies and time (`fedhaven.server.limits`); `auth` admits Fleet callers by their headers.
    With a `doorbell`: the Fleet gate (`hold` > 0) holds empty pulls, the Runtime gate rings it after a push.
    With `uploads` (one shared by both gates): a pulled message's answer waits until its objects are uploaded.
    """

    def __init__(self, app: ASGIApp, *, prefix: str, limits: Limits | None = None, auth: NodeAuth | None = None,
                 doorbell: Doorbell | None = None, hold: float = 0.0, uploads: Uploads | None = None) -> None:
        self.app = app
        self.prefix = prefix
        self.limits = limits or Limits()
        self.auth = auth
        self.budget = Budget(self.limits.in_flight)
        self.doorbell = doorbell
        self.hold = hold
        self.uploads = uploads
        self.refused = 0
        self.held = 0  # pulls answered after waiting for a message (for tests and benchmarks)
        self._holding: set[int] = set()  # nodes with a pull held right now

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
        node: int | None = None
        if self.auth is not None:
            verdict = await self.auth.admit(scope.get("headers", []))
            if verdict.node is None:
                self.refused += 1
                await respond(send, *_refusal(verdict, path))
                return
            node = verdict.node
        held = [0]
        try:
            body = await self._body(scope, receive, held)
            await self._serve(scope, path, body, receive, send)
        except _Refused as no:
            self.refused += 1
            await respond(send, no.status, f"fedhaven: {no.text}\n".encode(), CLOSE)
        except _Truncated:
            return  # the client left mid-body: nothing is forwarded, there is no one to answer
        finally:
            self.budget.give(held[0])
            if node is not None and self.auth is not None:
                self.auth.release(node)

    async def _serve(self, scope: Scope, path: str, body: bytes, receive: Receive, send: Send) -> None:
        node = pulling_node(body) if path == PULL_PATH and self.hold > 0 and self.doorbell is not None else None
        if node is not None and node not in self._holding and len(self._holding) < MAX_HELD:
            self._holding.add(node)  # one held pull per node: a site opening many gets the others answered at once
            try:
                await self._held_pull(scope, body, receive, send)
            finally:
                self._holding.discard(node)
            return
        if self.uploads is not None and path in PULL_PATHS:
            answer = await _call(self.app, scope, body)
            await self._settle(path, answer)
            await answer.send_to(send)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then whatever the client does next (a disconnect)

        status: list[int] = []
        if self.uploads is not None and path in PUSH_PATHS:
            send = _announcing(send, path, self.uploads)
        elif self.uploads is not None and path in OBJECT_PUSH_PATHS:
            send = _status_of(send, status)
        await self.app(scope, replay, send)
        if status == [200] and self.uploads is not None and (oid := pushed_object_id(body)):
            self.uploads.uploaded(oid)  # stored: a refused or failed upload strikes nothing off
        if path in RING_PATHS and self.doorbell is not None:
            self.doorbell.ring()

    async def _settle(self, path: str, answer: _Answer) -> None:
        """Hold a pull's answer until the objects of the messages in it are uploaded (see `Uploads`)."""
        if self.uploads is not None and len(self.uploads):
            await self.uploads.wait_for(pulled_object_ids(path, answer.status, answer.body))

    async def _held_pull(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Ask Flower's app until it has a message for this node, the hold ends, or the node hangs up."""
        assert self.doorbell is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold
        gone = asyncio.ensure_future(receive())  # the body is read: the next event is the client leaving
        asked = 0
        try:
            while True:
                bell = self.doorbell.current()
                answer = await _call(self.app, scope, body)
                asked += 1
                left = deadline - loop.time()
                if gone.done():
                    # a message marked as delivered: try to hand it over anyway
                    if not is_empty_pull(answer.status, answer.body):
                        await answer.send_to(send)
                    return
                if left <= 0 or not is_empty_pull(answer.status, answer.body):
                    self.held += asked > 1
                    await self._settle(PULL_PATH, answer)
                    await answer.send_to(send)
                    return
                waiters = [asyncio.ensure_future(bell.wait()), gone]
                await asyncio.wait(waiters, timeout=min(RECHECK, left), return_when=asyncio.FIRST_COMPLETED)
                waiters[0].cancel()
        finally:
            gone.cancel()

    async def _body(self, scope: Scope, receive: Receive, held: list[int]) -> bytes:
        """The whole body, within its path's cap, the budget and the request's deadline; `held[0]` counts the
        bytes taken from the budget (the caller gives them back when the request ends)."""
        cap = self.limits.body_cap(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > cap:
            raise _Refused(413, f"request body above {cap} bytes for this path")
        loop = asyncio.get_running_loop()
        deadline = float(scope.get(STARTED, loop.time())) + self.limits.read_timeout
        chunks: list[bytes] = []
        while True:
            left = deadline - loop.time()
            try:
                event = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                raise _Refused(408, "the request did not arrive in time") from None
            if event["type"] == "http.disconnect":
                raise _Truncated
            chunk = event.get("body", b"")
            if held[0] + len(chunk) > cap:
                raise _Refused(413, f"request body above {cap} bytes for this path")
            if not self.budget.take(len(chunk)):
                raise _Refused(503, "the coordinator is busy; try again")
            held[0] += len(chunk)
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)


class _Answer:
    """An HTTP answer of Flower's app, kept to be inspected before it is sent on."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    @property
    def status(self) -> int:
        return int(next((e["status"] for e in self.events if e["type"] == "http.response.start"), 500))

    @property
    def body(self) -> bytes:
        return b"".join(e.get("body", b"") for e in self.events if e["type"] == "http.response.body")

    async def send_to(self, send: Send) -> None:
        for event in self.events:
            await send(event)


async def _call(app: ASGIApp, scope: Scope, body: bytes) -> _Answer:
    """Flower's app on one request whose whole body is `body`, its answer captured."""
    answer = _Answer()
    delivered = False
    never = asyncio.Event()

    async def replay() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client is watched by the caller
        return {"type": "http.disconnect"}

    async def capture(event: dict[str, Any]) -> None:
        answer.events.append(event)

    await app(dict(scope), replay, capture)
    return answer


def _announcing(send: Send, path: str, uploads: Uploads) -> Send:
    """`send`, noting the objects a push answer asks for before its last byte leaves (the sender uploads them
    next): at the chunk that completes the declared content-length, or at the final chunk without one."""
    chunks: list[bytes] = []
    status, length, done = 0, -1, False

    async def wrapped(event: dict[str, Any]) -> None:
        nonlocal status, length, done
        if event["type"] == "http.response.start":
            status = int(event.get("status", 0))
            for key, value in event.get("headers", []):
                if key.lower() == b"content-length" and value.isdigit():
                    length = int(value)
        elif event["type"] == "http.response.body" and not done:
            chunks.append(event.get("body", b""))
            size = sum(map(len, chunks))
            if (not event.get("more_body") or 0 <= length <= size) and status == 200:
                done = True
                uploads.announced(objects_to_push(path, b"".join(chunks)))
        await send(event)

    return wrapped


def _status_of(send: Send, status: list[int]) -> Send:
    """`send`, recording the answer's status in `status`."""

    async def wrapped(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            status.append(int(event.get("status", 0)))
        await send(event)

    return wrapped


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _refusal(verdict: Verdict, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A refused caller's answer. A SuperNode whose key the coordinator does not know, asking to join, is told so as
    Flower's SuperLink tells it (412, FLEET_NODE_ACTIVATION_FAILED in Flower's HTTP error shape) so that it prints
    why and exits: on a 401 Flower's SuperNode stops itself without a word (`flwr.supercore.retry.http_retry`)."""
    if verdict.unknown_key and path == ACTIVATE_NODE_PATH:
        body = json.dumps({"code": ACTIVATION_FAILED_CODE, "detail": f"fedhaven: {verdict.reason}"}).encode()
        return 412, body, CLOSE_JSON
    wait = [(b"retry-after", retry_after(verdict.retry_after))] if verdict.retry_after > 0 else []
    return verdict.status, f"fedhaven: {verdict.reason}\n".encode(), [*CLOSE, *wait]


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = headers if headers is not None else [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
