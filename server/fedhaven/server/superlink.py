"""Flower's SuperLink with its doors split: the Control API only on a Unix socket, sites and the executor each on a
TCP listener that admits only their own API.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one port, and the
open-source Control API has no user authentication: any process that can open
a TCP connection to the SuperLink (any local account on loopback; any site
holding the CA certificate) can list, submit and stop runs. Here the very same
SuperLink application (Flower's `create_app`, with Flower's own argument parsing
and checks) is served by three uvicorn listeners in one process:

- a Unix socket in a directory only the operator's account can enter: every API
  (the operator's commands use it for the Control API);
- `--listen` (public, TLS): only `/v1/fleet/*`, for sites (SuperNode
  authentication is Flower's own, on every request); a site's empty message pull
  is held until the ServerApp pushes (`--pull-hold`, see `fedhaven.server.front`), and a pulled message
  until its objects are uploaded (`--settle`, `fedhaven.server.latency.uploads`), on both TCP listeners;
- `--runtime-listen` (127.0.0.1, TLS): only `/v1/runtime/*`, for Flower's ServerApp
  executor (its calls carry the executor's shared secret or a per-task token).

The TCP listeners wrap the app in `fedhaven.server.front.Gate` (refuse other
paths with 403; on the Fleet listener, with Flower's SuperNode authentication on,
callers that are not a registered node with a fresh signature get 401 before a
byte of their body is read; bodies above their path's cap 413, stalled requests
408; a site over its request rate 503) and run uvicorn's parser with
`fedhaven.server.limits` (connections per source and in total, a rate of new
connections per source, TLS handshakes in progress, header size, header and request
deadlines; the TLS handshake is the door's own, so these apply before it): no proxy
hop, no second HTTP parse. `fl-server start` passes
server.toml's `[coordinator.limits]` as these options (`Limits.options`).

Usage: `python -m fedhaven.server.superlink --uds PATH --listen HOST:PORT --runtime-listen 127.0.0.1:PORT
[--certfile F --keyfile F] <flower-superlink arguments>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from fedhaven.shared.runtime import harden_environment

harden_environment()

from fedhaven.server.door_http import Connections, uvicorn_options  # noqa: E402 - after harden_environment()
from fedhaven.server.front import (  # noqa: E402 - imported after harden_environment()
    DEFAULT_HOLD,
    FLEET_PREFIX,
    RUNTIME_PREFIX,
    Gate,
)
from fedhaven.server.gate_auth import NodeAuth  # noqa: E402 - imported after harden_environment()
from fedhaven.server.latency.uploads import DEFAULT_SETTLE, Doorbell, Uploads  # noqa: E402 - imported after harden_environment()
from fedhaven.server.limits import Limits  # noqa: E402 - after harden_environment()
from fedhaven.server.seam.fleet_auth import auth_enabled, registered_keys  # noqa: E402 - after harden_environment()
from fedhaven.server.seam.superlink_app import SUPERNODE_HTTP_TIMEOUT, superlink_app  # noqa: E402 - imported after harden_environment()


def _options(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """fedhaven's own options; everything else is Flower's `flower-superlink` command line."""
    p = argparse.ArgumentParser(prog="fedhaven-superlink", add_help=False)
    p.add_argument("--uds", required=True, help="the operator's socket (every API)")
    p.add_argument("--listen", required=True, help="host:port for sites (Fleet API only)")
    p.add_argument("--runtime-listen", required=True, help="127.0.0.1:port for Flower's executor (Runtime API only)")
    p.add_argument("--certfile", help="TLS certificate of both TCP listeners (none: plain HTTP, --insecure)")
    p.add_argument("--keyfile")
    d = Limits()
    p.add_argument("--max-object", type=int, default=d.max_object,
                   help="largest object push (Flower sends arrays in 5 MB chunks), bytes; other Fleet calls are "
                        "capped smaller")
    p.add_argument("--max-in-flight", type=int, default=d.in_flight, help="request bodies held at once, bytes")
    p.add_argument("--max-header", type=int, default=d.max_header, help="largest request line and headers, bytes")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout,
                   help="seconds from a request's first byte to its last header")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help="seconds from a request's first byte to its last body byte")
    p.add_argument("--max-connections", type=int, default=d.connections, help="open connections per listener")
    p.add_argument("--max-connections-per-source", type=int, default=d.per_source,
                   help="open connections per client address (a reverse proxy in front counts as one address)")
    p.add_argument("--max-node-requests", type=int, default=d.per_node,
                   help="requests one registered site may have open at once (more: 503 with Retry-After, unread)")
    p.add_argument("--node-rate", type=float, default=d.node_rate,
                   help="requests per second one registered site may make, sustained (more: 503 with Retry-After, "
                        "unread; Flower's SuperNode backs off and retries)")
    p.add_argument("--node-burst", type=int, default=d.node_burst,
                   help="requests one registered site may make at once above --node-rate")
    p.add_argument("--max-handshakes", type=int, default=d.handshakes,
                   help="TLS handshakes in progress at once per listener (more: the connection is closed at once)")
    p.add_argument("--source-rate", type=float, default=d.source_rate,
                   help="new connections per second from one address, sustained (more: closed before the TLS "
                        "handshake; a reverse proxy in front counts as one address)")
    p.add_argument("--source-burst", type=int, default=d.source_burst,
                   help="new connections one address may open at once above --source-rate")
    p.add_argument("--pull-hold", type=float, default=DEFAULT_HOLD,
                   help="seconds a site's empty message pull is held until the ServerApp pushes (0: answer at once)")
    p.add_argument("--settle", type=float, default=DEFAULT_SETTLE,
                   help="seconds, at most, a pulled message waits for the objects its sender is still uploading "
                        "(0: answer at once, and the receiver backs off as Flower does)")
    return p.parse_known_args(args)


def main(argv: list[str] | None = None) -> None:
    opts, flower_args = _options(list(sys.argv[1:] if argv is None else argv))
    if opts.pull_hold < 0 or opts.settle < 0 or opts.pull_hold + opts.settle >= SUPERNODE_HTTP_TIMEOUT:
        raise SystemExit(f"fedhaven superlink: --pull-hold ({opts.pull_hold:g}) and --settle ({opts.settle:g}) must "
                         f"be >= 0 and sum to less than {SUPERNODE_HTTP_TIMEOUT:g} s (the SuperNode's HTTP timeout)")
    try:
        _limits(opts)
    except ValueError as exc:
        raise SystemExit(f"fedhaven superlink: {exc}") from None
    os.umask(0o077)  # the socket, the database and its -wal/-shm files: owner only
    app = superlink_app(flower_args)
    if os.path.exists(opts.uds):
        os.unlink(opts.uds)  # a socket left by a killed SuperLink
    asyncio.run(_serve(app, opts))


def _limits(opts: argparse.Namespace) -> Limits:
    return Limits(max_object=opts.max_object, in_flight=opts.max_in_flight, max_header=opts.max_header,
                  header_timeout=opts.header_timeout, read_timeout=opts.read_timeout,
                  connections=opts.max_connections, per_source=opts.max_connections_per_source,
                  per_node=opts.max_node_requests, node_rate=opts.node_rate, node_burst=opts.node_burst,
                  handshakes=opts.max_handshakes, source_rate=opts.source_rate, source_burst=opts.source_burst)


async def _serve(app: Any, opts: argparse.Namespace) -> None:
    import uvicorn

    common: dict[str, Any] = {"log_level": "warning", "access_log": False, "server_header": False,
                              "timeout_keep_alive": 30}
    # Plain HTTP on the socket: the 0700 directory is the boundary. The app's lifespan runs here, once.
    inner = uvicorn.Server(uvicorn.Config(app, uds=opts.uds, lifespan="on", **common))
    tls = {"certfile": opts.certfile, "keyfile": opts.keyfile}  # the doors run their TLS handshakes, bounded
    doors = []
    bell = Doorbell()  # the runtime door rings it on every ServerApp push; the fleet door's held pulls wake up
    uploads = Uploads(settle=opts.settle)  # both doors: a pulled message waits for objects still being uploaded
    limits = _limits(opts)
    auth = (NodeAuth(lambda: registered_keys(app), per_node=limits.per_node, rate=limits.node_rate,
                     burst=limits.node_burst) if auth_enabled(app) else None)
    for address, prefix in ((opts.listen, FLEET_PREFIX), (opts.runtime_listen, RUNTIME_PREFIX)):
        host, _, port = address.rpartition(":")
        fleet = prefix == FLEET_PREFIX
        gate = Gate(app, prefix=prefix, limits=limits, auth=auth if fleet else None, doorbell=bell,
                    hold=opts.pull_hold if fleet else 0.0, uploads=uploads)
        door = uvicorn_options(limits, Connections(limits), **tls)
        doors.append(uvicorn.Server(uvicorn.Config(gate, host=host, port=int(port), lifespan="off",
                                                   **{**common, **door})))
    first = asyncio.create_task(inner.serve())
    while not inner.started:  # no TCP door opens before the SuperLink's state is up
        if first.done():
            return await first
        await asyncio.sleep(0.05)
    tasks = [first, *(asyncio.create_task(d.serve()) for d in doors)]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in (inner, *doors):  # one listener ended (a signal, a port in use): all end
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    if any(not d.started for d in doors):
        raise SystemExit("fedhaven superlink: a listener could not start (is its port in use?)")


if __name__ == "__main__":  # pragma: no cover
    main()
