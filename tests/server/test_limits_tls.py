"""The door runs its own TLS handshakes, bounded, in a real uvicorn process: connection caps and a per-address rate
of new connections apply before any handshake work, at most `handshakes` are in progress, a stalled one ends at
the header deadline, and an honest HTTPS client is served as before."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest

from fedhaven.shared.crypto import make_ca, make_server_cert

DOOR = """
import sys
import uvicorn
from fedhaven.server.front import FLEET_PREFIX, Gate
from fedhaven.server.door_http import Connections, uvicorn_options
from fedhaven.server.limits import Limits

async def echo(scope, receive, send):
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    out = scope["scheme"].encode() + b"|" + body
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": out})

limits = Limits(header_timeout=3.0, read_timeout=6.0, handshakes=2, source_rate=1.0, source_burst=3)
uvicorn.run(Gate(echo, prefix=FLEET_PREFIX, limits=limits), host="127.0.0.1", port=int(sys.argv[1]),
            lifespan="off", log_level="warning",
            **uvicorn_options(limits, Connections(limits), certfile=sys.argv[2], keyfile=sys.argv[3]))
"""
HEADER_TIMEOUT = 3.0  # a handshake must end within it: on this shared machine an honest one can take a second


@pytest.fixture(scope="module")
def door(tmp_path_factory, script_server):
    pki = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    server = make_server_cert(ca=ca, dns_names=["localhost"], ips=["127.0.0.1"])
    (pki / "ca.pem").write_bytes(ca.cert_pem)
    (pki / "server.pem").write_bytes(server.cert_pem)
    (pki / "server.key").write_bytes(server.key_pem)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with script_server(DOOR, str(pki / "server.pem"), str(pki / "server.key")) as ((port,), _):
        yield port, context


def _post(port: int, context: ssl.SSLContext, source: str) -> bytes:
    transport = httpx.HTTPTransport(verify=context, local_address=source)
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.post(f"https://localhost:{port}/v1/fleet/x", content=b"hi").content


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the door closes `s` (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _tcp(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def test_an_honest_https_client_is_served_over_the_doors_own_tls(door):
    port, context = door
    assert _post(port, context, "127.0.0.2") == b"https|hi"


def test_handshakes_in_progress_are_capped_and_a_stalled_one_ends_at_the_header_deadline(door):
    port, context = door
    stallers = [_tcp(port, "127.0.0.3"), _tcp(port, "127.0.0.4")]  # TCP only, never a ClientHello
    time.sleep(0.3)
    extra = _tcp(port, "127.0.0.5")
    try:
        assert _closed_within(extra, HEADER_TIMEOUT - 1.0)  # a third handshake in progress: closed without one
        t = time.monotonic()
        assert all(_closed_within(s, HEADER_TIMEOUT + 3.0) for s in stallers)
        assert time.monotonic() - t <= HEADER_TIMEOUT + 3.0
    finally:
        for s in [*stallers, extra]:
            s.close()
    assert _post(port, context, "127.0.0.6") == b"https|hi"  # the door serves again


def test_new_connections_past_an_addresss_rate_are_closed_before_the_handshake(door):
    port, context = door
    source = "127.0.0.7"
    served = [_post(port, context, source) for _ in range(3)]  # the burst
    assert served == [b"https|hi"] * 3
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        _post(port, context, source)
    assert _post(port, context, "127.0.0.8") == b"https|hi"  # another address is not held back
