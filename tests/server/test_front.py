"""The coordinator's TCP doors (Gate), in a real server process: only their own API prefix passes; oversized, stalled
and garbage requests get a 4xx and the door keeps serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_BODY = 4096


GATES = """
import asyncio, sys
import uvicorn
from fedhaven.server.front import FLEET_PREFIX, RUNTIME_PREFIX, Gate

async def echo(scope, receive, send):  # stands in for Flower's SuperLink app: answers with path and body
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    out = scope["path"].encode() + b"|" + body
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})

async def main():
    servers = [uvicorn.Server(uvicorn.Config(Gate(echo, prefix=prefix, max_body=int(sys.argv[3]), read_timeout=1.0),
                                             host="127.0.0.1", port=int(port), lifespan="off", log_level="warning"))
               for port, prefix in ((sys.argv[1], FLEET_PREFIX), (sys.argv[2], RUNTIME_PREFIX))]
    await asyncio.gather(*(s.serve() for s in servers))

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def front():
    fleet, runtime = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-c", GATES, str(fleet), str(runtime), str(MAX_BODY)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{runtime}/", timeout=1)
            httpx.get(f"http://127.0.0.1:{fleet}/", timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.2)
    yield f"http://127.0.0.1:{fleet}", f"http://127.0.0.1:{runtime}", fleet
    proc.terminate()
    proc.wait(timeout=15)


def _raw(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def test_each_listener_forwards_only_its_api(front):
    fleet, runtime, _ = front
    r = httpx.post(fleet + "/v1/fleet/pull-messages", content=b"abc")
    assert r.status_code == 200 and r.content == b"/v1/fleet/pull-messages|abc"
    assert httpx.post(runtime + "/v1/runtime/pull-task-input", content=b"x").status_code == 200
    for base, path in ((fleet, "/v1/control/list-runs"), (fleet, "/v1/control/start-run"),
                       (fleet, "/v1/runtime/acquire-task"), (runtime, "/v1/control/stop-run"),
                       (runtime, "/v1/fleet/pull-messages"), (fleet, "/health"), (fleet, "/docs")):
        r = httpx.post(base + path, content=b"")
        assert r.status_code == 403, (base, path)


def test_path_tricks_are_refused(front):
    _, _, port = front
    for path in (b"/v1/fleet/../control/list-runs", b"/v1/fleet//../../v1/control/x", b"/v1/fleet/%2e%2e/control"):
        reply = _raw(port, b"POST " + path + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        status = int(reply.split(b" ")[1])
        assert status in (403, 404), (path, reply[:200])


def test_oversized_body_gets_413_and_the_front_keeps_serving(front):
    fleet, _, _ = front
    assert httpx.post(fleet + "/v1/fleet/push-object", content=b"x" * (MAX_BODY + 1)).status_code == 413
    assert httpx.post(fleet + "/v1/fleet/push-object", content=b"x" * MAX_BODY).status_code == 200


def test_a_stalled_client_gets_408_and_does_not_block_others(front):
    fleet, _, port = front
    started = time.monotonic()
    holder: dict[str, bytes] = {}
    stalled = threading.Thread(target=lambda: holder.setdefault("reply", _raw(
        port, b"POST /v1/fleet/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")))
    stalled.start()
    time.sleep(0.2)
    assert httpx.post(fleet + "/v1/fleet/y", content=b"ok").status_code == 200  # served meanwhile
    stalled.join(timeout=10)
    assert holder["reply"].startswith(b"HTTP/1.1 408"), holder
    assert time.monotonic() - started < 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=300))
def test_garbage_gets_a_4xx_or_a_closed_connection_never_a_crash(front, garbage):
    fleet, _, port = front
    reply = _raw(port, garbage + b"\r\n\r\n", wait=3)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:200]
    assert httpx.post(fleet + "/v1/fleet/z", content=b"still").content == b"/v1/fleet/z|still"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet="abcv1/._-%~", min_size=1, max_size=40), body=st.binary(max_size=64))
def test_only_fleet_paths_ever_reach_the_superlink(front, path, body):
    fleet, _, port = front
    raw = f"/{path}".encode()
    reply = _raw(port, b"POST " + raw + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    status = int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/") else 0
    forwarded = status == 200
    assert forwarded == (raw.startswith(b"/v1/fleet/") and b".." not in raw and b"//" not in raw), (raw, reply[:80])
    assert status in (200, 400, 403, 404, 0), (raw, reply[:200])
