"""Each registered node's request rate at the Fleet door: a token bucket (injected clock, no timing), over-rate
answered 503 with Retry-After before the signature is checked or a byte read, and claims nobody signed unable to
empty an honest node's bucket. Then the limits' way from server.toml to the running door."""

from __future__ import annotations

import asyncio
import datetime
from base64 import b64encode

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import fedhaven.server.gate_auth as gate_auth
from fedhaven.server.front import FLEET_PREFIX, Gate
from fedhaven.server.gate_auth import NodeAuth
from fedhaven.server.limits import Limits, Rates

PULL = FLEET_PREFIX + "pull-messages"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Key:
    """A SuperNode's key pair: Flower's three authentication headers for the current time, signed or forged."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def headers(self, *, forged: bool = False) -> list[tuple[bytes, bytes]]:
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        signer = ec.generate_private_key(ec.SECP384R1()) if forged else self.key
        sig = signer.sign(stamp.encode(), ec.ECDSA(hashes.SHA256()))
        return [(b"flwr-public-key", b64encode(self.pem)), (b"flwr-timestamp", stamp.encode()),
                (b"flwr-signature", b64encode(sig))]


HONEST, FLOODER = Key(), Key()


def test_a_bucket_gives_its_burst_then_its_rate_and_looking_takes_nothing():
    clock = Clock()
    rates = Rates(rate=4.0, burst=3, clock=clock)
    assert rates.wait("a") == 0.0 and rates.wait("a") == 0.0  # looking takes nothing
    assert [rates.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rates.take("a") == pytest.approx(0.25) and rates.wait("a") == pytest.approx(0.25)
    assert rates.take("b") == 0.0  # every key its own bucket
    clock.now += 0.25
    assert rates.take("a") == 0.0 and rates.take("a") == pytest.approx(0.25)
    clock.now += 3600  # refills to the burst, never above
    assert [rates.take("a") for _ in range(4)][-1] == pytest.approx(0.25)


def test_full_buckets_are_forgotten_when_many_are_held(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(Rates, "PRUNE_AT", 10)
    rates = Rates(rate=1.0, burst=2, clock=clock)
    for key in range(10):
        rates.take(key)
    clock.now += 5  # all refilled
    rates.take("new")
    assert len(rates._buckets) == 1  # only the one just drawn from


def _auth(clock: Clock, **kw) -> NodeAuth:
    return NodeAuth(lambda: {HONEST.pem: 1, FLOODER.pem: 2}, clock=clock, **kw)


def _admit(auth: NodeAuth, headers: list[tuple[bytes, bytes]]):
    verdict = asyncio.run(auth.admit(headers))
    if verdict.node is not None:
        auth.release(verdict.node)
    return verdict


def test_a_node_over_its_rate_gets_503_with_retry_after_before_its_signature_is_checked(monkeypatch):
    clock = Clock()
    auth = _auth(clock, rate=2.0, burst=5)
    checked = []
    real = gate_auth.signature_holds
    monkeypatch.setattr(gate_auth, "signature_holds", lambda claim: checked.append(1) or real(claim))
    assert [_admit(auth, FLOODER.headers()).node for _ in range(5)] == [2] * 5
    assert len(checked) == 5
    over = [_admit(auth, FLOODER.headers()) for _ in range(50)]
    assert {(v.node, v.status) for v in over} == {(None, 503)}
    assert over[0].retry_after == pytest.approx(0.5)
    assert len(checked) == 5  # an empty bucket is seen before the signature: no over-rate request was verified
    assert _admit(auth, HONEST.headers()).node == 1  # other nodes are untouched
    clock.now += 0.5
    assert _admit(auth, FLOODER.headers()).node == 2  # one token back after 1 / rate seconds


def test_claims_nobody_signed_never_empty_an_honest_nodes_bucket():
    clock = Clock()
    auth = _auth(clock, rate=1.0, burst=3)
    forged = [_admit(auth, HONEST.headers(forged=True)) for _ in range(20)]
    assert {(v.node, v.status, v.reason) for v in forged} == {(None, 401, "invalid signature")}
    assert [_admit(auth, HONEST.headers()).node for _ in range(3)] == [1, 1, 1]  # the whole burst is still there
    # once the honest node has emptied its own bucket, a forged claim on it is refused unverified, as it is
    assert _admit(auth, HONEST.headers(forged=True)).status == 503


def test_the_door_answers_over_rate_503_with_retry_after_unread():
    clock = Clock()
    bodies: list[bytes] = []

    async def flower(scope, receive, send):
        bodies.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gate = Gate(flower, prefix=FLEET_PREFIX, limits=Limits(max_object=1 << 16, in_flight=1 << 17),
                auth=_auth(clock, rate=0.4, burst=1))

    async def call() -> tuple[int, dict[bytes, bytes], int]:
        read, sent = [0], []

        async def receive():
            read[0] += 1
            return {"type": "http.request", "body": b"pull", "more_body": False}

        async def send(event):
            sent.append(event)

        scope = {"type": "http", "path": PULL, "method": "POST",
                 "headers": [*FLOODER.headers(), (b"content-length", b"4")]}
        await gate(scope, receive, send)
        start = sent[0]
        return start["status"], dict(start["headers"]), read[0]

    assert asyncio.run(call())[0] == 200
    status, headers, read = asyncio.run(call())
    assert (status, read, headers[b"retry-after"], headers[b"connection"]) == (503, 0, b"3", b"close")  # 2.5 s up
    assert bodies == [b"pull"]


# ----- server.toml -> fl-server start -> the SuperLink's doors --------------------------------------------------

SERVER_TOML = """[coordinator]
listen = "127.0.0.1:19092"

[coordinator.limits]
node_rate = 7.5
node_burst = 300
per_node = 8
max_object = 33554432
in_flight = 134217728
max_header = 8192
header_timeout = 5.0
read_timeout = 30.0
per_source = 16
connections = 200
handshakes = 32
source_rate = 5.0
source_burst = 50
"""


def test_server_toml_limits_reach_the_doors_options(tmp_path):
    from fedhaven.server import superlink
    from fedhaven.server.coordinator import Coordinator
    from fedhaven.server.provision import StateDir

    (tmp_path / "server.toml").write_text(SERVER_TOML)
    state = StateDir(tmp_path)
    cfg = state.config()
    assert cfg.limits == Limits(node_rate=7.5, node_burst=300, per_node=8, max_object=32 << 20, in_flight=128 << 20,
                                max_header=8192, header_timeout=5.0, read_timeout=30.0, per_source=16,
                                connections=200, handshakes=32, source_rate=5.0, source_burst=50)
    argv = Coordinator(state=state, cfg=cfg, insecure=False).superlink_command()
    assert argv[:3][1:] == ["-m", "fedhaven.server.superlink"]
    opts, flower_args = superlink._options(argv[3:])
    assert superlink._limits(opts) == cfg.limits  # what the doors and NodeAuth are built from
    assert "--enable-supernode-auth" in flower_args and not any(a.startswith("--node-") for a in flower_args)


def test_defaults_are_not_frozen_into_a_new_server_toml(tmp_path):
    from fedhaven.server.provision import CoordinatorConfig, StateDir, init_state

    state = StateDir(tmp_path / "st")
    init_state(state=state, cfg=CoordinatorConfig())
    assert "limits" not in state.config_file.read_text() and state.config().limits == Limits()


@pytest.mark.parametrize(("table", "expected"), [
    ("[coordinator.limits]\nnode_rate = 0\nmax_header = 10\n",
     ["limits.node_rate: must be >= 1, got 0.0", "limits.max_header: must be >= 4096, got 10"]),
    ("[coordinator.limits]\nmax_object = 536870912\n", ["limits.in_flight (268435456) must be at least max_object"]),
    ("[limits]\nnode_rate = 5\n", ["[limits]: not a table of server.toml", "under [coordinator.limits]"]),
    ("[coordinator.limits]\nnode_rat = 5\n", ["limits.node_rat: unknown setting"]),
    ("[coordinator.limits]\nhandshakes = 0\nsource_rate = 0.5\n",
     ["limits.handshakes: must be >= 1, got 0", "limits.source_rate: must be >= 1, got 0.5"]),
])
def test_fl_server_check_names_every_out_of_range_limit(tmp_path, capsys, table, expected):
    from fedhaven.server.cli import main

    (tmp_path / "server.toml").write_text(f"[coordinator]\nlisten = \"127.0.0.1:19092\"\n{table}")
    assert main(["check", "--insecure", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert all(e in err for e in expected), err


def test_fl_server_check_accepts_limits_in_range(tmp_path, capsys):
    import json

    from fedhaven.server.cli import main

    (tmp_path / "server.toml").write_text(SERVER_TOML)
    assert main(["check", "--insecure", "--json", "--state-dir", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["limits"]["node_rate"] == 7.5 and doc["limits"]["node_burst"] == 300
