"""The sites' only door: a TLS front that forwards Flower's Fleet API (/v1/fleet/*) and refuses everything else.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one port, and the
open-source Control API has no user authentication: any site holding the CA
certificate could submit or stop runs. So the SuperLink listens on the
coordinator's loopback only, and this front is what sites reach.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

FLEET_PREFIX = "/v1/fleet/"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "host", "content-length"}
REFUSAL = (b"fedhaven: sites may only use Flower's Fleet API (/v1/fleet/). The Control and Runtime APIs are "
           b"served to the operator on the coordinator host only.\n")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FleetFront:
    """ASGI app: forwards Fleet requests verbatim (headers, body) to the SuperLink, answers 403 to anything else."""

    def __init__(self, *, upstream: str, ca_cert: Path | None) -> None:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
        self.upstream = upstream.rstrip("/")
        self.client = httpx.AsyncClient(base_url=self.upstream, verify=verify, timeout=httpx.Timeout(600.0))
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(FLEET_PREFIX) or ".." in path:
            self.refused += 1
            await _respond(send, 403, REFUSAL, [(b"content-type", b"text/plain")])
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _HOP_BY_HOP]
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            upstream = await self.client.request(scope["method"], path + (f"?{query}" if query else ""),
                                                 headers=headers, content=body)
        except httpx.HTTPError as exc:
            await _respond(send, 502, f"fedhaven front: coordinator unavailable ({type(exc).__name__})\n".encode(),
                           [(b"content-type", b"text/plain")])
            return
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upstream.headers.items()
                       if k.lower() not in _HOP_BY_HOP]
        await _respond(send, upstream.status_code, upstream.content, out_headers)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve(*, host: str, port: int, upstream: str, certfile: Path | None, keyfile: Path | None,
          ca_cert: Path | None) -> None:
    """Run the front until interrupted (plain HTTP only when no certificate is given: --insecure)."""
    import uvicorn

    config = uvicorn.Config(FleetFront(upstream=upstream, ca_cert=ca_cert), host=host, port=port,
                            ssl_certfile=str(certfile) if certfile else None,
                            ssl_keyfile=str(keyfile) if keyfile else None, log_level="warning", lifespan="on",
                            server_header=False)
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fedhaven-front", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="host:port sites connect to")
    p.add_argument("--upstream", required=True, help="the SuperLink's loopback URL, e.g. https://127.0.0.1:9093")
    p.add_argument("--certfile", type=Path)
    p.add_argument("--keyfile", type=Path)
    p.add_argument("--ca-cert", type=Path, help="CA that signed the SuperLink's certificate")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    serve(host=host, port=int(port), upstream=a.upstream, certfile=a.certfile, keyfile=a.keyfile, ca_cert=a.ca_cert)


if __name__ == "__main__":  # pragma: no cover
    main()
