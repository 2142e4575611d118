"""A pulled message waits for the objects its sender is still uploading (instead of Flower's 1 s backoff), never
longer than the settle time, and nothing a peer sends can make the coordinator remember without bound."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhaven.server.front import FLEET_PREFIX, RUNTIME_PREFIX, Doorbell, Gate
from fedhaven.server.latency.uploads import Uploads
from fedhaven.server.seam.wire import tree_ids


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_announced_objects_are_pending_until_uploaded_or_expired():
    clock = FakeClock()
    up = Uploads(settle=5.0, clock=clock)
    up.announced(["a", "b", "c"])
    assert up.pending_among(["a", "b", "x"]) == ["a", "b"]
    up.uploaded("a")
    up.uploaded("never-announced")  # harmless
    assert up.pending_among(["a", "b"]) == ["b"] and len(up) == 2
    clock.now += 5.0
    assert up.pending_among(["b", "c"]) == [] and len(up) == 0  # waited long enough: forgotten


def test_settle_zero_waits_for_nothing_and_the_table_is_bounded():
    off = Uploads(settle=0.0)
    off.announced(["a"])
    assert len(off) == 0
    clock = FakeClock()
    small = Uploads(settle=1.0, max_pending=3, clock=clock)
    small.announced([f"o{i}" for i in range(10)])  # a flood of announcements: only max_pending remembered
    assert len(small) == 3
    clock.now += 2
    small.announced(["new"])  # expired ones make room
    assert small.pending_among(["new"]) == ["new"] and len(small) == 1
    with pytest.raises(ValueError):
        Uploads(settle=-1)


def test_wait_for_returns_when_the_last_object_arrives_and_gives_up_after_settle():
    async def scenario():
        up = Uploads(settle=0.6)
        up.announced(["a", "b"])

        async def upload():
            await asyncio.sleep(0.05)
            up.uploaded("a")
            await asyncio.sleep(0.05)
            up.uploaded("b")

        t = time.monotonic()
        await asyncio.gather(up.wait_for(["a", "b", "unrelated"]), upload())
        arrived = time.monotonic() - t
        up.announced(["lost"])  # its sender died before uploading it
        t = time.monotonic()
        await up.wait_for(["lost"])
        return arrived, time.monotonic() - t, up.waited

    arrived, gave_up, waited = asyncio.run(scenario())
    assert 0.09 <= arrived < 0.4, arrived  # right after the second upload, not at the 0.5 s recheck
    assert 0.5 <= gave_up < 1.2, gave_up  # never longer than settle (then Flower's own retries)
    assert waited == 2


def _tree(root: str, *children: str):
    from flwr.proto.message_pb2 import ObjectTree

    return ObjectTree(object_id=root, children=[ObjectTree(object_id=c) for c in children])


def test_tree_ids_walks_nested_trees():
    from flwr.proto.message_pb2 import ObjectTree

    tree = ObjectTree(object_id="m", children=[_tree("r", "a1", "a2"), _tree("s")])
    assert sorted(tree_ids([tree, _tree("m2", "x")])) == ["a1", "a2", "m", "m2", "r", "s", "x"]


# --- through the gates, with a stand-in for Flower's SuperLink app ---------------------------------------------------

def _superlink(objects: list[str], stored: list[str]):
    """Answers pushes with `objects` to upload, stores uploads, and hands out one message whose tree is `objects`."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse, PushMessagesResponse
    from flwr.proto.message_pb2 import Message, PushObjectRequest
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse, PushAppMessagesResponse

    async def app(scope, receive, send):
        body = (await receive()).get("body", b"")
        path = scope["path"]
        tree = _tree(objects[0], *objects[1:])
        if path == FLEET_PREFIX + "pull-messages":
            out = PullMessagesResponse(messages_list=[Message()], message_object_trees=[tree]).SerializeToString()
        elif path == RUNTIME_PREFIX + "pull-messages":
            out = PullAppMessagesResponse(messages_list=[Message()], message_object_trees=[tree]).SerializeToString()
        elif path == RUNTIME_PREFIX + "push-messages":
            out = PushAppMessagesResponse(objects_to_push=objects).SerializeToString()
        elif path == FLEET_PREFIX + "push-messages":
            out = PushMessagesResponse(objects_to_push=objects).SerializeToString()
        elif path.endswith("push-object"):
            try:
                stored.append(PushObjectRequest.FromString(body).object_id)
                out = b""
            except Exception:  # noqa: BLE001 - Flower answers garbage with a client error
                out = b"bad request"
        else:
            out = b"?"
        status = 400 if out == b"bad request" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": out})

    return app


async def _post(gate: Gate, path: str, body: bytes = b"") -> tuple[int, bytes]:
    events: list[dict] = []
    read = False

    async def receive():
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(event):
        events.append(event)

    await gate({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    status = next(e["status"] for e in events if e["type"] == "http.response.start")
    return status, b"".join(e.get("body", b"") for e in events if e["type"] == "http.response.body")


def _object(oid: str) -> bytes:
    from flwr.proto.message_pb2 import PushObjectRequest

    return PushObjectRequest(object_id=oid, object_content=b"x" * 10).SerializeToString()


def _gates(objects, stored, *, settle=5.0):
    app, bell, uploads = _superlink(objects, stored), Doorbell(), Uploads(settle=settle)
    return (Gate(app, prefix=FLEET_PREFIX, doorbell=bell, hold=0.0, uploads=uploads),
            Gate(app, prefix=RUNTIME_PREFIX, doorbell=bell, uploads=uploads), uploads)


@pytest.mark.parametrize("direction", ["to a site", "to the ServerApp"])
def test_a_pulled_message_is_answered_once_its_objects_are_uploaded(direction):
    """The ServerApp pushes a train message (or a site its reply): the receiver's pull waits for the uploads, then
    gets Flower's answer unchanged."""
    objects = ["msg", "rec", "arr1", "arr2"]

    async def scenario():
        stored: list[str] = []
        fleet, runtime, uploads = _gates(objects, stored)
        sender, receiver = (runtime, fleet) if direction == "to a site" else (fleet, runtime)
        prefix_out, prefix_in = sender.prefix, receiver.prefix
        assert (await _post(sender, prefix_out + "push-messages"))[0] == 200
        pull = asyncio.ensure_future(_post(receiver, prefix_in + "pull-messages"))
        for oid in objects:
            await asyncio.sleep(0.08)
            assert not pull.done(), f"answered before {oid} was uploaded"
            await _post(sender, prefix_out + "push-object", _object(oid))
        t = time.monotonic()
        status, body = await pull
        return status, body, time.monotonic() - t, stored, uploads

    status, body, after_last, stored, uploads = asyncio.run(scenario())
    assert status == 200 and after_last < 0.4 and stored == objects  # woken by the upload, not the 0.5 s recheck
    assert uploads.waited == 1 and len(uploads) == 0
    if direction == "to a site":
        from flwr.proto.fleet_pb2 import PullMessagesResponse as Pulled
    else:
        from flwr.proto.runtime_pb2 import PullAppMessagesResponse as Pulled
    assert sorted(tree_ids(Pulled.FromString(body).message_object_trees)) == sorted(objects)


def test_a_sender_that_dies_mid_upload_delays_its_receiver_by_at_most_settle():
    async def scenario():
        fleet, runtime, _ = _gates(["msg", "arr"], [], settle=0.5)
        await _post(runtime, RUNTIME_PREFIX + "push-messages")
        await _post(runtime, RUNTIME_PREFIX + "push-object", _object("msg"))  # then the ServerApp is killed
        t = time.monotonic()
        status, _ = await _post(fleet, FLEET_PREFIX + "pull-messages")
        return status, time.monotonic() - t

    status, took = asyncio.run(scenario())
    assert status == 200 and 0.3 <= took < 1.2, took  # "arr" was awaited, for at most settle


def test_garbage_pushes_and_pulls_change_nothing_and_crash_nothing():
    async def scenario():
        fleet, runtime, uploads = _gates(["msg"], [])
        await _post(runtime, RUNTIME_PREFIX + "push-messages")
        for garbage in (b"\xff\xfe not protobuf", b"", b"\x0a\xff"):
            await _post(runtime, RUNTIME_PREFIX + "push-object", garbage)
            await _post(fleet, FLEET_PREFIX + "push-object", garbage)
        return len(uploads)

    assert asyncio.run(scenario()) == 1  # "msg" is still awaited: garbage cleared nothing


def test_announcing_the_same_objects_again_and_again_does_not_extend_a_wait():
    async def scenario():
        up = Uploads(settle=0.4)
        up.announced(["x"])

        async def nag():
            for _ in range(10):
                await asyncio.sleep(0.1)
                up.announced(["x"])

        nagging = asyncio.ensure_future(nag())
        took = await up.wait_for(["x"])
        nagging.cancel()
        return took

    assert asyncio.run(scenario()) < 0.8  # one settle per answer, whatever the sender repeats


def test_a_held_pull_is_answered_once_the_message_it_was_woken_for_is_uploaded():
    """The Fleet gate's held pull (hold > 0) wakes at the ServerApp's push, then waits for the uploads."""
    objects = ["msg", "arr"]

    async def scenario():
        app, bell, uploads = _empty_until_pushed(_superlink(objects, [])), Doorbell(), Uploads(settle=5.0)
        fleet = Gate(app, prefix=FLEET_PREFIX, doorbell=bell, hold=5.0, uploads=uploads)
        runtime = Gate(app, prefix=RUNTIME_PREFIX, doorbell=bell, uploads=uploads)
        pull = asyncio.ensure_future(_post(fleet, FLEET_PREFIX + "pull-messages", _pull_body(9)))
        await asyncio.sleep(0.2)
        assert not pull.done()  # held: nothing pushed yet
        await _post(runtime, RUNTIME_PREFIX + "push-messages")
        await asyncio.sleep(0.2)
        assert not pull.done()  # woken, but its objects are not uploaded
        for oid in objects:
            await _post(runtime, RUNTIME_PREFIX + "push-object", _object(oid))
        t = time.monotonic()
        status, _ = await pull
        return status, time.monotonic() - t, fleet.held, uploads.waited

    status, after, held, waited = asyncio.run(scenario())
    assert status == 200 and after < 0.4 and held == 1 and waited == 1


def _pull_body(node_id: int) -> bytes:
    from flwr.proto.fleet_pb2 import PullMessagesRequest

    req = PullMessagesRequest()
    req.node.node_id = node_id
    return req.SerializeToString()


def _empty_until_pushed(app):
    """Flower's app as a held pull sees it: no message for the site until the ServerApp pushed one."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse

    pushed = []

    async def wrapped(scope, receive, send):
        if scope["path"].endswith("push-messages"):
            pushed.append(True)
        if scope["path"] == FLEET_PREFIX + "pull-messages" and not pushed:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": PullMessagesResponse().SerializeToString()})
            return
        await app(scope, receive, send)

    return wrapped


def test_a_push_answer_in_chunks_is_announced_before_its_last_byte_leaves_and_a_refusal_announces_nothing():
    from flwr.proto.runtime_pb2 import PushAppMessagesResponse

    from fedhaven.server.front import _announcing

    body = PushAppMessagesResponse(objects_to_push=["a", "b"]).SerializeToString()

    async def scenario(status, headers, chunks):
        up = Uploads(settle=5.0)
        seen_when_sent = []

        async def send(event):
            if event["type"] == "http.response.body":
                seen_when_sent.append(len(up))

        wrapped = _announcing(send, RUNTIME_PREFIX + "push-messages", up)
        await wrapped({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            await wrapped({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        return seen_when_sent

    length = [(b"content-length", str(len(body)).encode())]
    # Starlette's shape: the whole body with more_body, then an empty last chunk: announced at the first
    assert asyncio.run(scenario(200, length, [body, b""])) == [2, 2]
    assert asyncio.run(scenario(200, [], [body[:3], body[3:]])) == [0, 2]  # no length: at the final chunk
    assert asyncio.run(scenario(403, length, [body])) == [0]


def test_only_an_upload_flower_accepted_strikes_its_object_off():
    async def scenario():
        up = Uploads(settle=5.0)

        async def refusing(scope, receive, send):
            await receive()
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})

        gate = Gate(refusing, prefix=FLEET_PREFIX, uploads=up)
        up.announced(["reply"])
        await _post(gate, FLEET_PREFIX + "push-object", _object("reply"))  # e.g. not signed by a known site
        return up.pending_among(["reply"])

    assert asyncio.run(scenario()) == ["reply"]


@settings(max_examples=200, deadline=None)
@given(oid=st.text(alphabet="0123456789abcdef", max_size=64), content=st.binary(max_size=300),
       node=st.integers(0, 2**63 - 1), run=st.integers(0, 2**63 - 1))
def test_the_object_id_scan_agrees_with_protobuf(oid, content, node, run):
    from flwr.proto.message_pb2 import PushObjectRequest

    from fedhaven.server.seam.wire import pushed_object_id

    req = PushObjectRequest(object_id=oid, object_content=content, run_id=run)
    req.node.node_id = node
    body = req.SerializeToString()
    assert pushed_object_id(body) == oid
    for cut in (1, len(body) // 2):  # truncated or garbage: "" or a prefix-free answer, never an exception
        assert isinstance(pushed_object_id(body[:-cut] if cut < len(body) else b""), str)
    assert pushed_object_id(b"\xff" * 20) == ""


@pytest.mark.parametrize("hold,settle", [(10.0, 25.0), (-1.0, 5.0), (5.0, -0.1)])
def test_a_hold_and_settle_that_could_outlast_the_supernodes_timeout_are_refused(hold, settle):
    from fedhaven.server import superlink

    with pytest.raises(SystemExit, match="SuperNode's HTTP timeout"):
        superlink.main(["--uds", "/nonexistent/s.sock", "--listen", "127.0.0.1:1", "--runtime-listen",
                        "127.0.0.1:2", "--pull-hold", str(hold), "--settle", str(settle)])
