"""A few seconds of the main attack against the door alone (Gate + guarded uvicorn in a real process, short
deadlines, a stand-in for Flower's app): what `make test` keeps of `make abuse`."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.abuse_smoke

DOOR = """
import sys
import uvicorn
from fedhaven.server.front import FLEET_PREFIX, Gate
from fedhaven.server.gate_auth import NodeAuth
from fedhaven.server.door_http import Connections, uvicorn_options
from fedhaven.server.limits import Limits

async def flower(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"flower"})

limits = Limits(header_timeout=1.0, read_timeout=2.0)
gate = Gate(flower, prefix=FLEET_PREFIX, limits=limits, auth=NodeAuth(lambda: {b"a registered key": 1}))
uvicorn.run(gate, host="127.0.0.1", port=int(sys.argv[1]), lifespan="off", log_level="warning",
            **uvicorn_options(limits, Connections(limits)))
"""
SECONDS, CLIENTS = 3.0, 20


@pytest.fixture
def door_process(script_server):
    with script_server(DOOR) as ((port,), proc):
        yield port, proc.pid


def test_unauthenticated_bodies_and_stalled_headers_cost_the_door_nothing(door_process, tools, observe):
    port, pid = door_process
    obs = observe(f"smoke (the door alone, plain HTTP): {CLIENTS} clients without a key for {SECONDS:g} s, half "
                  "pushing 150 MB bodies, half stalling in their headers", "401 unread; stallers let go at the "
                  "1 s header deadline; the door's memory flat")
    door = tools.Door(port=port)
    bodies, stallers = tools.Tally(), tools.Tally()
    idle = tools.rss_mb(pid)

    async def go():
        stop = asyncio.get_running_loop().time() + SECONDS
        await asyncio.gather(*(tools.until(stop, tools.big_body, door, tools.source(i), bodies) if i % 2 else
                               tools.until(stop, tools.slow_headers, door, tools.source(i), stallers, every=0.2)
                               for i in range(CLIENTS)))

    with tools.Meter(pid, every=0.2) as meter:
        asyncio.run(go())
    obs.observed += [f"bodies: {bodies.summary()}", f"stallers: {stallers.summary()}",
                     f"RSS idle {idle:.0f} MB, peak {max(meter.rss):.0f} MB"]
    # 401 at the headers, connection closed: a client still writing may meet the reset before it reads the 401
    assert bodies.connections >= CLIENTS // 2 and set(bodies.statuses) <= {"401", "closed"}, bodies.statuses
    assert bodies.statuses.get("401", 0) > bodies.connections // 2 and max(bodies.sent) <= 32 * tools.MB
    assert set(stallers.statuses) == {"408"} and stallers.worst() < 2.5, stallers.summary()
    assert max(meter.rss) - idle < 30
