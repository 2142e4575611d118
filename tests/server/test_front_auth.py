"""The Fleet door admits by Flower's SuperNode authentication headers before reading a body; caps, budget and
truncation hold; malformed, truncated and oversized bodies and headers never raise, leak budget or reach Flower."""

from __future__ import annotations

import asyncio
import datetime
from base64 import b64encode

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhaven.server.front import FLEET_PREFIX, Gate
from fedhaven.server.gate_auth import NodeAuth
from fedhaven.server.limits import Limits

NODE = 7
PULL = FLEET_PREFIX + "pull-messages"
OBJECT = FLEET_PREFIX + "push-object"


class Site:
    """A SuperNode's key pair; `headers()` signs the current time as Flower's SuperNode does."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def headers(self, *, age: float = 0.0) -> list[tuple[bytes, bytes]]:
        stamp = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age)).isoformat()
        sig = self.key.sign(stamp.encode(), ec.ECDSA(hashes.SHA256()))
        return [(b"flwr-public-key", b64encode(self.pem)), (b"flwr-timestamp", stamp.encode()),
                (b"flwr-signature", b64encode(sig))]


SITE = Site()


class Flower:
    """Stands in for Flower's app: records every body it is handed."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _gate(limits: Limits | None = None, **auth) -> tuple[Gate, Flower]:
    app = Flower()
    keys = {SITE.pem: NODE}
    return Gate(app, prefix=FLEET_PREFIX, limits=limits or Limits(max_object=1 << 16, in_flight=1 << 17),
                auth=NodeAuth(lambda: keys, **auth)), app


async def _call(gate: Gate, path: str, headers: list, chunks: list[bytes], *, hang_up: bool = False,
                stall: bool = False, length: int | None = None) -> tuple[int | None, int]:
    """(status or None, how many body events the gate read); `chunks` then a hang-up, a stall or the end."""
    read = [0]
    sent: list[dict] = []
    queue = list(chunks) or ([] if hang_up or stall else [b""])

    async def receive():
        if queue:
            read[0] += 1
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue) or hang_up or stall}
        if hang_up:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(event):
        sent.append(event)

    size = sum(map(len, chunks)) if length is None else length
    scope = {"type": "http", "path": path, "method": "POST",
             "headers": [*headers, (b"content-length", str(size).encode())]}
    await asyncio.wait_for(gate(scope, receive, send), timeout=10)
    return next((e["status"] for e in sent if e["type"] == "http.response.start"), None), read[0]


def _run(coro):
    return asyncio.run(coro)


def test_a_registered_site_with_a_fresh_signature_is_forwarded():
    gate, app = _gate()
    assert _run(_call(gate, PULL, SITE.headers(), [b"pull"])) == (200, 1)
    assert app.bodies == [b"pull"] and gate.budget.used == 0 and not gate.auth.busy


@pytest.mark.parametrize("case", ["none", "stale", "future", "stranger", "bad-signature", "duplicate", "garbage"])
def test_an_unauthenticated_caller_gets_401_before_a_byte_of_its_body_is_read(case):
    gate, app = _gate()
    stranger = Site()
    headers = {"none": [], "stale": SITE.headers(age=400), "future": SITE.headers(age=-60),
               "stranger": stranger.headers(),
               "bad-signature": [*SITE.headers()[:2], (b"flwr-signature", stranger.headers()[2][1])],
               "duplicate": [*SITE.headers(), (b"flwr-public-key", b64encode(stranger.pem))],
               "garbage": [(b"flwr-public-key", b"%%%"), (b"flwr-timestamp", b"x"), (b"flwr-signature", b"")]}[case]
    assert _run(_call(gate, OBJECT, headers, [b"x" * 60000])) == (401, 0)
    assert app.bodies == []


def test_replayed_headers_are_refused_even_inside_flowers_window():
    gate, app = _gate()
    headers = SITE.headers()
    assert _run(_call(gate, PULL, headers, [b"a"]))[0] == 200
    assert _run(_call(gate, PULL, headers, [b"b"])) == (401, 0)
    assert app.bodies == [b"a"] and gate.auth.refused["replayed authentication headers"] == 1


def test_a_node_with_too_many_requests_open_gets_503_unread():
    gate, _ = _gate(per_node=1)

    async def both():
        first = asyncio.ensure_future(_call(gate, PULL, SITE.headers(), [b"part"], stall=True))
        await asyncio.sleep(0.05)
        second = await _call(gate, PULL, SITE.headers(), [b"x"])
        first.cancel()
        return second

    assert _run(both()) == (503, 0)  # Flower's SuperNode retries a 503 (it gives up on a 429)


def test_a_declared_or_growing_body_above_its_paths_cap_gets_413():
    gate, app = _gate()
    assert _run(_call(gate, PULL, SITE.headers(), [b"x"], length=1 << 20)) == (413, 0)  # declared: unread
    assert _run(_call(gate, PULL, SITE.headers(), [b"x" * 40000, b"x" * 40000], length=10))[0] == 413  # lied
    assert _run(_call(gate, OBJECT, SITE.headers(), [b"x" * 60000]))[0] == 200  # an object may be bigger
    assert app.bodies == [b"x" * 60000] and gate.budget.used == 0


def test_bodies_past_the_budget_in_flight_get_503_and_the_budget_comes_back():
    gate, _ = _gate(Limits(max_object=1 << 16, in_flight=1 << 16))

    async def go():
        stuck = asyncio.ensure_future(_call(gate, OBJECT, SITE.headers(), [b"x" * 50000], stall=True))
        await asyncio.sleep(0.05)
        status = (await _call(gate, OBJECT, SITE.headers(), [b"y" * 30000]))[0]
        used = gate.budget.used
        stuck.cancel()
        await asyncio.sleep(0)
        return status, used

    assert _run(go()) == (503, 50000)
    assert gate.budget.used == 0


def test_a_truncated_body_is_never_forwarded():
    gate, app = _gate()
    assert _run(_call(gate, OBJECT, SITE.headers(), [b"half"], hang_up=True, length=8)) == (None, 1)
    assert app.bodies == [] and gate.budget.used == 0 and not gate.auth.busy


def test_a_body_that_does_not_arrive_by_the_deadline_gets_408():
    gate, app = _gate(Limits(max_object=1 << 16, in_flight=1 << 17, read_timeout=0.3, header_timeout=0.3))
    assert _run(_call(gate, OBJECT, SITE.headers(), [b"half"], stall=True)) == (408, 1)
    assert app.bodies == [] and gate.budget.used == 0


HEADER_PARTS = st.sampled_from([b"flwr-public-key", b"flwr-timestamp", b"flwr-signature", b"content-length",
                                b"x-other"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutate=st.lists(st.tuples(HEADER_PARTS, st.binary(max_size=80)), max_size=6),
       keep=st.lists(st.booleans(), min_size=3, max_size=3),
       body=st.lists(st.binary(max_size=3000), max_size=4), hang_up=st.booleans(),
       path=st.sampled_from([PULL, OBJECT, FLEET_PREFIX + "push-messages", FLEET_PREFIX + "send-node-heartbeat"]))
def test_fuzzed_headers_and_bodies_never_raise_leak_or_reach_flower_unless_whole_and_signed(
        mutate, keep, body, hang_up, path):
    gate, app = _gate(Limits(max_object=4096, in_flight=8192, read_timeout=1.0, header_timeout=1.0))
    signed = SITE.headers()
    headers = [h for h, k in zip(signed, keep, strict=True) if k] + [(n.lower(), v) for n, v in mutate]
    status, _ = _run(_call(gate, path, headers, body, hang_up=hang_up))
    intact = all(keep) and not any(n.startswith(b"flwr-") for n, _ in mutate)
    whole = not hang_up and sum(map(len, body)) <= gate.limits.body_cap(path)
    assert (app.bodies == [b"".join(body)]) == (intact and whole and status == 200)
    assert status in (200, 401, 413, 503, None)
    assert gate.budget.used == 0 and not gate.auth.busy


@settings(max_examples=40, deadline=None)
@given(body=st.binary(max_size=2000))
def test_garbage_protobufs_from_a_signed_site_are_flowers_to_refuse_and_crash_nothing(body):
    from fedhaven.server.front import Doorbell

    app = Flower()
    gate = Gate(app, prefix=FLEET_PREFIX, auth=NodeAuth(lambda: {SITE.pem: NODE}), doorbell=Doorbell(), hold=0.2)
    assert _run(_call(gate, PULL, SITE.headers(), [body]))[0] == 200
    assert app.bodies and set(app.bodies) == {body} and gate.budget.used == 0


def test_an_unknown_key_asking_to_join_is_told_as_flower_tells_it():
    """On a 401 Flower's SuperNode stops itself without a word; an unknown key's activation gets Flower's own
    activation failure (412, in Flower's error shape), which the SuperNode prints and `fl-client start` names."""
    from flwr.supercore.error.base import ApiErrorCode, FlowerError

    from fedhaven.client.seam.formats import admission_failures
    from fedhaven.server.front import _refusal
    from fedhaven.server.gate_auth import Verdict

    unknown = Verdict(None, 401, "unknown or revoked key", unknown_key=True)
    status, body, _ = _refusal(unknown, "/v1/fleet/activate-node")
    err = FlowerError.from_json(body.decode())
    assert status == 412 and err is not None and err.code == ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED
    assert admission_failures(line=f"[code: {err.code}] {err.message}") == ("key-rejected",)
    assert _refusal(unknown, "/v1/fleet/pull-messages")[0] == 401  # a revoked node that still pulls: Flower's 401
    assert _refusal(Verdict(None, 401, "invalid signature"), "/v1/fleet/activate-node")[0] == 401
