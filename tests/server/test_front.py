"""The coordinator's TCP doors (Gate), in a real server process: only their own API prefix passes; oversized, stalled
and garbage requests get a 4xx and the door keeps serving."""

from __future__ import annotations

import asyncio
import socket
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
from fedhaven.server.door_http import Connections, uvicorn_options
from fedhaven.server.limits import Limits

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
    limits = Limits(max_object=int(sys.argv[3]), read_timeout=1.0, header_timeout=1.0)
    servers = [uvicorn.Server(uvicorn.Config(Gate(echo, prefix=prefix, limits=limits),
                                             host="127.0.0.1", port=int(port), lifespan="off", log_level="warning",
                                             **uvicorn_options(limits, Connections(limits))))
               for port, prefix in ((sys.argv[1], FLEET_PREFIX), (sys.argv[2], RUNTIME_PREFIX))]
    await asyncio.gather(*(s.serve() for s in servers))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def front(script_server):
    with script_server(GATES, str(MAX_BODY), ports=2) as ((fleet, runtime), _):
        yield f"http://127.0.0.1:{fleet}", f"http://127.0.0.1:{runtime}", fleet


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


# --- held pulls: a SuperNode's empty pull waits for the ServerApp's push instead of Flower's 3 s sleep ---------------

def _flower_like(available: list, calls: list):
    """Stands in for Flower's app: a pull answers a PullMessagesResponse with the next available message, if any."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse
    from flwr.proto.message_pb2 import Message

    async def app(scope, receive, send):
        await receive()
        if scope["path"].endswith("/pull-messages"):
            calls.append(time.monotonic())
            msgs = [Message()] if available and available.pop(0) else []
            body = PullMessagesResponse(messages_list=msgs).SerializeToString()
        else:
            body = b"pushed"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def _pull_body(node_id):
    from flwr.proto.fleet_pb2 import PullMessagesRequest

    req = PullMessagesRequest()
    req.node.node_id = node_id
    return req.SerializeToString()


async def _request(gate, path, *, hang_up_after=None, node_id=7):
    """One request through `gate` from node `node_id`: (status, body, seconds it took)."""
    events = []
    state = {"read": False}

    async def receive():
        if not state["read"]:
            state["read"] = True
            return {"type": "http.request", "body": _pull_body(node_id), "more_body": False}
        await asyncio.sleep(3600 if hang_up_after is None else hang_up_after)
        return {"type": "http.disconnect"}

    async def send(event):
        events.append(event)

    t = time.monotonic()
    await gate({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    status = next((e["status"] for e in events if e["type"] == "http.response.start"), None)
    return status, b"".join(e.get("body", b"") for e in events if e["type"] == "http.response.body"), \
        time.monotonic() - t


def _messages(body):
    from flwr.proto.fleet_pb2 import PullMessagesResponse

    return len(PullMessagesResponse.FromString(body).messages_list)


def _gates(available, calls, *, hold):
    from fedhaven.server.front import FLEET_PREFIX, RUNTIME_PREFIX, Doorbell, Gate

    app, bell = _flower_like(available, calls), Doorbell()
    return (Gate(app, prefix=FLEET_PREFIX, doorbell=bell, hold=hold),
            Gate(app, prefix=RUNTIME_PREFIX, doorbell=bell))


def test_a_held_pull_gets_the_message_as_soon_as_the_serverapp_pushes_it():
    async def scenario():
        available, calls = [], []
        fleet, runtime = _gates(available, calls, hold=5.0)
        pull = asyncio.ensure_future(_request(fleet, "/v1/fleet/pull-messages"))
        await asyncio.sleep(0.3)
        assert not pull.done()  # nothing to deliver yet: held, not answered empty
        available.append(True)
        pushed = time.monotonic()
        assert (await _request(runtime, "/v1/runtime/push-messages"))[0] == 200
        status, body, _ = await pull
        return status, body, time.monotonic() - pushed, len(calls), fleet.held

    status, body, after_push, asked, held = asyncio.run(scenario())
    assert status == 200 and _messages(body) == 1 and held == 1
    assert after_push < 0.25, after_push  # woken by the push, not by the 0.5 s recheck nor Flower's 3 s sleep
    assert asked <= 3  # not a busy loop: the first ask, one recheck at most, the ask after the ring


def test_an_empty_pull_is_answered_empty_when_the_hold_ends():
    available, calls = [], []
    fleet, _ = _gates(available, calls, hold=0.6)
    status, body, took = asyncio.run(_request(fleet, "/v1/fleet/pull-messages"))
    assert status == 200 and _messages(body) == 0 and 0.6 <= took < 1.5
    assert 2 <= len(calls) <= 4  # rechecked about every 0.5 s without a ring


def test_a_site_that_hangs_up_stops_its_hold_and_no_message_is_taken_for_it():
    async def scenario():
        available, calls = [], []
        fleet, _ = _gates(available, calls, hold=5.0)
        took = (await _request(fleet, "/v1/fleet/pull-messages", hang_up_after=0.2))[2]
        asked = len(calls)
        available.append(True)
        await asyncio.sleep(0.7)  # a message arrives after it left: nobody pulls it in its name
        return took, asked, len(calls), available

    took, asked, asked_later, available = asyncio.run(scenario())
    assert took < 1.0 and asked_later == asked and available == [True]


def test_without_a_hold_a_pull_is_passed_through_at_once():
    available, calls = [], []
    fleet, _ = _gates(available, calls, hold=0.0)
    status, body, took = asyncio.run(_request(fleet, "/v1/fleet/pull-messages"))
    assert status == 200 and _messages(body) == 0 and took < 0.3 and len(calls) == 1


def test_one_held_pull_per_site_and_garbage_is_never_held():
    async def scenario():
        available, calls = [], []
        fleet, _ = _gates(available, calls, hold=1.0)
        first = asyncio.ensure_future(_request(fleet, "/v1/fleet/pull-messages", node_id=5))
        await asyncio.sleep(0.1)
        second = (await _request(fleet, "/v1/fleet/pull-messages", node_id=5))[2]  # the same site again
        other = asyncio.ensure_future(_request(fleet, "/v1/fleet/pull-messages", node_id=6))
        await asyncio.sleep(0.1)
        held_other = not other.done()
        await asyncio.gather(first, other)
        return second, held_other

    second, held_other = asyncio.run(scenario())
    assert second < 0.3 and held_other  # a second pull from a site is answered at once; another site's is held

    from fedhaven.server.front import FLEET_PREFIX, Doorbell, Gate

    calls = []
    gate = Gate(_flower_like([], calls), prefix=FLEET_PREFIX, doorbell=Doorbell(), hold=5.0)

    async def garbage():
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"\xff\xfe not protobuf", "more_body": False}

        async def send(event):
            sent.append(event)

        t = time.monotonic()
        await gate({"type": "http", "path": "/v1/fleet/pull-messages", "method": "POST", "headers": []}, receive, send)
        return time.monotonic() - t

    assert asyncio.run(garbage()) < 0.3 and len(calls) == 1  # passed to Flower once (which rejects it), not held
