"""The door's limits below the application, in a real uvicorn process: header size, header and request deadlines,
connections per source and in total; each abuser is let go and the door keeps serving."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

DOOR = """
import asyncio, sys
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
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})

limits = Limits(max_header=2048, header_timeout=0.5, read_timeout=1.0, per_source=3, connections=8)
uvicorn.run(Gate(echo, prefix=FLEET_PREFIX, limits=limits), host="127.0.0.1", port=int(sys.argv[1]),
            lifespan="off", log_level="warning", **uvicorn_options(limits, Connections(limits)))
"""


@pytest.fixture(scope="module")
def door(script_server):
    with script_server(DOOR) as ((port,), _):
        yield port


def _served(port: int) -> bool:
    return httpx.post(f"http://127.0.0.1:{port}/v1/fleet/ok", content=b"hi", timeout=5).content == b"hi"


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def _reply(s: socket.socket) -> tuple[bytes, float]:
    """Everything until the door closes the connection, and how long that took."""
    t, out = time.monotonic(), b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out, time.monotonic() - t


def test_headers_above_the_limit_get_431_before_they_end(door):
    with _connect(door) as s:
        s.sendall(b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 4000)
        try:
            s.sendall(b"a" * 200_000)  # the rest may meet a closed connection
        except OSError:
            pass
        out, _ = _reply(s)
    assert out.startswith(b"HTTP/1.1 431"), out[:100]
    assert _served(door)


@pytest.mark.parametrize("sent", [b"", b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\n"], ids=["silent", "mid-headers"])
def test_a_client_stalling_before_its_headers_end_is_let_go_at_the_header_deadline(door, sent):
    with _connect(door) as s:
        s.sendall(sent)
        out, took = _reply(s)
    assert out.startswith(b"HTTP/1.1 408") and took < 2.0, (out[:100], took)


def test_a_client_trickling_its_body_is_let_go_at_the_request_deadline(door):
    with _connect(door) as s:
        s.sendall(b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        t = time.monotonic()
        out = b""
        try:
            for _ in range(30):  # a byte every 0.1 s: never idle, never done
                s.sendall(b"x")
                time.sleep(0.1)
        except OSError:
            pass
        out, _ = _reply(s)
        took = time.monotonic() - t
    assert out.startswith(b"HTTP/1.1 408") and took < 2.5, (out[:100], took)


def test_connections_above_the_per_source_cap_are_closed_unread_and_other_sources_still_get_in(door):
    held = [_connect(door, "127.0.0.5") for _ in range(3)]
    try:
        extra = _connect(door, "127.0.0.5")
        extra.sendall(b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        out, took = _reply(extra)
        extra.close()
        assert out == b"" and took < 1.0
        assert _served(door)  # another source
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    with _connect(door, "127.0.0.5") as s:  # the slots came back
        s.sendall(b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        assert _reply(s)[0].startswith(b"HTTP/1.1 200")


def test_connections_above_the_total_cap_are_closed(door):
    held = [_connect(door, f"127.0.1.{i}") for i in range(1, 9)]
    try:
        extra = _connect(door, "127.0.2.1")
        extra.sendall(b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        assert _reply(extra)[0] == b""
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert _served(door)


def test_limits_that_contradict_each_other_are_refused_all_at_once():
    from fedhaven.server.limits import Limits

    with pytest.raises(ValueError) as err:
        Limits(max_object=2 << 20, in_flight=1 << 20, header_timeout=30.0, read_timeout=20.0, per_source=0)
    text = str(err.value)
    assert "per_source must be > 0" in text and "in_flight" in text and "header_timeout" in text
