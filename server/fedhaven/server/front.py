"""The coordinator's only TCP doors: the Fleet API for sites and the Runtime API for Flower's executor, nothing else.

Flower 1.42 serves its Fleet, Control and Runtime APIs on one port, and the
open-source Control API has no user authentication. So the SuperLink listens on
a Unix socket only the operator's account can reach (`fedhaven.server.superlink`),
and this front forwards, verbatim:

- on the public listener (TLS): `/v1/fleet/*`, for sites (SuperNode auth is
  Flower's own, on every request);
- on a loopback listener: `/v1/runtime/*`, for Flower's ServerApp executor
  (its calls carry the executor's shared secret or a per-task token).

Everything else, the Control API above all, is answered 403. Requests are
bounded: a body above `max_body` is refused with 413, a client that sends
nothing for `read_timeout` seconds gets 408, and garbage gets uvicorn's 400.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

FLEET_PREFIX = "/v1/fleet/"
RUNTIME_PREFIX = "/v1/runtime/"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}
REFUSAL = (b"fedhaven: only Flower's Fleet API (/v1/fleet/) is served here. The Control API is served to the "
           b"operator's account on the coordinator host only.\n")
DEFAULT_MAX_BODY = 256 << 20  # a model push of a few hundred MB is the largest thing a site sends

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
    pass


class Front:
    """ASGI app: forwards requests under `prefix` to the SuperLink's socket, answers 403 to anything else."""

    def __init__(self, *, prefix: str, client: httpx.AsyncClient, max_body: int = DEFAULT_MAX_BODY,
                 read_timeout: float = 60.0) -> None:
        self.prefix = prefix
        self.client = client
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(self.prefix) or ".." in path or "//" in path:
            self.refused += 1
            await _respond(send, 403, REFUSAL)
            return
        try:
            body = await self._body(receive)
        except _TooLarge:
            await _respond(send, 413, f"fedhaven front: request body above {self.max_body} bytes\n".encode())
            return
        except TimeoutError:
            await _respond(send, 408, b"fedhaven front: the request body did not arrive in time\n")
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _HOP_BY_HOP]
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            upstream = await self.client.request(scope["method"], path + (f"?{query}" if query else ""),
                                                 headers=headers, content=body)
        except httpx.HTTPError as exc:
            await _respond(send, 502, f"fedhaven front: coordinator unavailable ({type(exc).__name__})\n".encode())
            return
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.items()
                       if k.lower() not in _HOP_BY_HOP]
        await _respond(send, upstream.status_code, upstream.content, out_headers)

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await asyncio.wait_for(receive(), timeout=self.read_timeout)
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = headers if headers is not None else [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def upstream_client(uds: str) -> httpx.AsyncClient:
    """One pooled client to the SuperLink's socket (plain HTTP on the socket: the directory is the boundary)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=uds), base_url="http://superlink",
                             timeout=httpx.Timeout(600.0))


async def serve(*, listen: str, runtime_listen: str, uds: str, certfile: Path | None, keyfile: Path | None,
                max_body: int = DEFAULT_MAX_BODY, read_timeout: float = 60.0) -> None:
    """Both listeners until interrupted (plain HTTP only when no certificate is given: --insecure)."""
    import uvicorn

    client = upstream_client(uds)
    servers = []
    for address, prefix in ((listen, FLEET_PREFIX), (runtime_listen, RUNTIME_PREFIX)):
        host, _, port = address.rpartition(":")
        config = uvicorn.Config(Front(prefix=prefix, client=client, max_body=max_body, read_timeout=read_timeout),
                                host=host, port=int(port),
                                ssl_certfile=str(certfile) if certfile else None,
                                ssl_keyfile=str(keyfile) if keyfile else None, log_level="warning",
                                lifespan="on", server_header=False, timeout_keep_alive=30,
                                h11_max_incomplete_event_size=64 * 1024)
        servers.append(uvicorn.Server(config))
    try:
        await asyncio.gather(*(s.serve() for s in servers))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fedhaven-front", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="host:port sites connect to (Fleet API)")
    p.add_argument("--runtime-listen", required=True, help="127.0.0.1:port for Flower's executor (Runtime API)")
    p.add_argument("--uds", required=True, help="the SuperLink's Unix socket")
    p.add_argument("--certfile", type=Path)
    p.add_argument("--keyfile", type=Path)
    p.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, help="largest request body, bytes")
    p.add_argument("--read-timeout", type=float, default=60.0, help="seconds a client may stall mid-request")
    a = p.parse_args(argv)
    asyncio.run(serve(listen=a.listen, runtime_listen=a.runtime_listen, uds=a.uds, certfile=a.certfile,
                      keyfile=a.keyfile, max_body=a.max_body, read_timeout=a.read_timeout))


if __name__ == "__main__":  # pragma: no cover
    main()
