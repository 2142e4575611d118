"""SecAgg+ on the site's terms: a coordinator that lowers the threshold, invents neighbours or lists a site both active
and dead is refused before the site sends anything it could unmask (the test plays the coordinator)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code as FlowerCode
from flwr.common import FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_mod, parameters_subtraction
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client.flower_app import make_client_app
from fedhaven.client.roster import Roster, load_roster
from fedhaven.client.types import Code, Site, SiteInfo
from fedhaven.shared.config import ConfigError
from fedhaven.shared.crypto import fingerprint, make_site_keypair, write_private
from fedhaven.shared.schema import SitePolicy
from fedhaven.shared.secagg_keys import NEIGHBOURS_RECORD, PROOF_RECORD, KeyProof, keys_payload
from fedhaven.shared.signing import SigningKey

from .conftest import OneSite

RANGES = {Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0}
NODE = 7


def _msg(cfg: dict, *, node: int = NODE, round_id: str = "1", content: RecordDict | None = None) -> Message:
    content = content if content is not None else RecordDict()
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(cfg)
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=round_id)


def _setup(*, sample: int, shares: int, threshold: int) -> dict:
    return {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: sample, Key.SHARE_NUMBER: shares, Key.THRESHOLD: threshold,
            **RANGES}


def _ctx(node: int = NODE) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


def _keys(reply: Message) -> tuple[bytes, bytes]:
    cfg = reply.content.config_records[RECORD_KEY_CONFIGS]
    return cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]


def _fake_keys() -> tuple[bytes, bytes]:
    """Public keys the coordinator makes up (it holds their private halves)."""
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

    return public_key_to_bytes(generate_key_pairs()[1]), public_key_to_bytes(generate_key_pairs()[1])


@pytest.fixture
def keyed(tmp_path):
    """`keyed(name)`: (path of a new site key, its SigningKey)."""

    def make(name: str):
        private, _ = make_site_keypair()
        write_private(tmp_path / f"{name}.key", private)
        return tmp_path / f"{name}.key", SigningKey(tmp_path / f"{name}.key")

    return make


@pytest.fixture
def site(synthetic_images, keyed):
    """`site(roster=..., **policy)`: the ClientApp of hospital-a (one site key per test) and its SigningKey."""
    path, key = keyed("hospital-a")

    def make(*, roster: Roster | None = None, **policy):
        info = SiteInfo(name="hospital-a", policy=replace(SitePolicy(), **policy), signing_key=path, roster=roster)
        return make_client_app(sites=OneSite(Site(info=info, data=synthetic_images))), key

    make.key = key  # type: ignore[attr-defined]
    return make


def _refusal(reply: Message) -> str:
    assert reply.has_error(), "the stage was not refused"
    assert reply.error.code == int(Code.SECAGG), reply.error
    assert not reply.has_content()  # nothing of the protocol was sent: no key, no share
    return reply.error.reason


def test_flowers_bare_mod_lets_a_lone_site_be_unmasked_by_a_threshold_of_one():
    """The attack: threshold 1, the site alone. Flower's own SecAgg+ client answers every stage, and the
    coordinator rebuilds the site's individual update from its own share of the mask seed."""
    update = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)]

    def train(msg: Message, ctx: Context) -> Message:
        res = FitRes(Status(FlowerCode.OK, ""), ndarrays_to_parameters(update), 10, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    ctx = _ctx()
    pk1, pk2 = _keys(secaggplus_mod(_msg(_setup(sample=1, shares=1, threshold=1)), ctx, train))
    secaggplus_mod(_msg({Key.STAGE: Stage.SHARE_KEYS, str(NODE): [pk1, pk2]}), ctx, train)
    masked = secaggplus_mod(_msg({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [],
                                  Key.SOURCE_LIST: []}), ctx, train)
    unmask = secaggplus_mod(_msg({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [NODE],
                                  Key.DEAD_NODE_ID_LIST: []}), ctx, train)
    vectors = [bytes_to_ndarray(b) for b in masked.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
    seed = combine_shares(unmask.content.config_records[RECORD_KEY_CONFIGS][Key.SHARE_LIST])
    mask = pseudo_rand_gen(seed, RANGES[Key.MOD_RANGE], [v.shape for v in vectors])
    quantized = parameters_mod(parameters_subtraction(vectors, mask), RANGES[Key.MOD_RANGE])
    rebuilt = dequantize(quantized[1:], RANGES[Key.CLIPPING_RANGE], RANGES[Key.TARGET_RANGE])  # [0]: the weight
    assert np.abs(rebuilt[0] / quantized[0].item() * RANGES[Key.TARGET_RANGE] - update[0]).max() < 1e-3


def test_a_threshold_of_one_or_a_lone_site_is_refused_before_any_key_is_sent(site):
    app, _ = site()
    why = _refusal(app(_msg(_setup(sample=1, shares=1, threshold=1)), _ctx()))
    assert "reconstruction threshold 1 is below this site's minimum (policy.secagg_min_threshold = 2)" in why
    assert "the round has 1 site(s), fewer than this site's minimum (policy.min_sites = 3)" in why
    why = _refusal(app(_msg(_setup(sample=5, shares=5, threshold=2)), _ctx()))
    assert "not more than half of the 5 shares" in why


def test_a_site_with_a_key_signs_its_public_keys_for_this_run_round_and_node(site):
    app, key = site()
    reply = app(_msg(_setup(sample=3, shares=3, threshold=2)), _ctx())
    pk1, pk2 = _keys(reply)
    proof = KeyProof.from_record(reply.content.config_records[PROOF_RECORD])
    assert proof is not None and proof.site == "hospital-a" and proof.key == key.public_openssh
    from fedhaven.shared.signing import verify

    signed = keys_payload(run_id=1, round_id="1", node_id=NODE, pk1=pk1, pk2=pk2)
    assert verify(public_openssh=proof.key, data=signed, signature=proof.signature)
    assert not verify(public_openssh=proof.key, signature=proof.signature,
                      data=keys_payload(run_id=1, round_id="2", node_id=NODE, pk1=pk1, pk2=pk2))


def _share_keys(own: tuple[bytes, bytes], neighbours: dict[int, tuple[bytes, bytes]],
                proofs: dict[int, KeyProof] | None) -> Message:
    msg = _msg({Key.STAGE: Stage.SHARE_KEYS, str(NODE): list(own), **{str(n): list(k) for n, k in neighbours.items()}})
    if proofs is not None:
        msg.content.config_records[NEIGHBOURS_RECORD] = ConfigRecord({str(n): p.to_list() for n, p in proofs.items()})
    return msg


def _proof(key: SigningKey, name: str, node: int, keys: tuple[bytes, bytes], round_id: str = "1") -> KeyProof:
    return KeyProof(name, key.public_openssh,
                    key.sign(keys_payload(run_id=1, round_id=round_id, node_id=node, pk1=keys[0], pk2=keys[1])))


def _roster(tmp_path, **sites: SigningKey) -> Roster:
    lines = "\n".join(f'"{n}" = "{k.fingerprint}"' for n, k in sites.items())
    (tmp_path / "roster.toml").write_text(f"[sites]\n{lines}\n")
    return load_roster(tmp_path / "roster.toml")


def test_with_a_roster_invented_or_misnamed_neighbours_get_no_share(site, keyed, tmp_path):
    _, b = keyed("hospital-b")
    _, c = keyed("hospital-c")
    _, stranger = keyed("stranger")
    app, _ = site(roster=_roster(tmp_path, **{"hospital-a": site.key, "hospital-b": b, "hospital-c": c}))
    kb, kc = _fake_keys(), _fake_keys()

    def attempt(proofs: dict[int, KeyProof] | None) -> Message:
        ctx = _ctx()
        own = _keys(app(_msg(_setup(sample=3, shares=3, threshold=2)), ctx))
        return app(_share_keys(own, {8: kb, 9: kc}, proofs), ctx)

    assert "forwarded no signed keys" in _refusal(attempt(None))
    why = _refusal(attempt({8: _proof(stranger, "hospital-b", 8, kb), 9: _proof(c, "hospital-c", 9, kc)}))
    assert f"node 8: says it is 'hospital-b' but signs with key {stranger.fingerprint}" in why
    why = _refusal(attempt({8: _proof(stranger, "mallory", 8, kb), 9: _proof(c, "hospital-c", 9, kc)}))
    assert "node 8: says it is 'mallory', which is not on the roster" in why
    why = _refusal(attempt({8: _proof(b, "hospital-b", 9, kb), 9: _proof(c, "hospital-c", 9, kc)}))
    assert "node 8 (hospital-b): the signature does not cover these keys" in why  # replayed for another node
    why = _refusal(attempt({8: _proof(b, "hospital-b", 8, kb, round_id="0"), 9: _proof(c, "hospital-c", 9, kc)}))
    assert "node 8 (hospital-b): the signature does not cover these keys" in why  # an old round's proof
    why = _refusal(attempt({8: _proof(b, "hospital-b", 8, kb), 9: _proof(b, "hospital-b", 9, kc)}))
    assert "node 9: 'hospital-b' also appears as node 8" in why
    reply = attempt({8: _proof(b, "hospital-b", 8, kb), 9: _proof(c, "hospital-c", 9, kc)})
    assert not reply.has_error(), reply.error
    assert sorted(reply.content.config_records[RECORD_KEY_CONFIGS][Key.DESTINATION_LIST]) == [8, 9]


def test_without_a_roster_the_site_trusts_the_coordinator_for_who_its_neighbours_are(site):
    """What holds without a roster: an honest-but-curious coordinator. Invented neighbours are not detectable."""
    app, _ = site()
    ctx = _ctx()
    own = _keys(app(_msg(_setup(sample=3, shares=3, threshold=2)), ctx))
    reply = app(_share_keys(own, {8: _fake_keys(), 9: _fake_keys()}, None), ctx)
    assert not reply.has_error(), reply.error


def test_too_few_neighbours_are_refused(site):
    app, _ = site(secagg_min_neighbours=3)
    ctx = _ctx()
    own = _keys(app(_msg(_setup(sample=3, shares=3, threshold=2)), ctx))
    why = _refusal(app(_share_keys(own, {8: _fake_keys(), 9: _fake_keys()}, None), ctx))
    assert "2 other site(s) would mask this site's update, fewer than its minimum" in why


@pytest.mark.parametrize(("active", "dead", "expected"), [
    ([7, 8, 9], [8], "node(s) 8 listed both active and dead"),
    ([8, 9, 10], [7], "this site is listed dead although it is answering"),
    ([7, 8], [9], "2 active site(s) would be summed, fewer than this site's minimum (policy.min_sites = 3)"),
    ([7, 8, 9, 42], [], "node(s) 42 were never this site's neighbours"),
])
def test_unmask_lists_that_would_reveal_one_site_are_refused(site, active, dead, expected):
    app, _ = site()
    ctx = _ctx()
    own = _keys(app(_msg(_setup(sample=3, shares=3, threshold=2)), ctx))
    assert not app(_share_keys(own, {8: _fake_keys(), 9: _fake_keys()}, None), ctx).has_error()
    why = _refusal(app(_msg({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active,
                             Key.DEAD_NODE_ID_LIST: dead}), ctx))
    assert expected in why and "hands over no share" in why


def test_a_roster_is_checked_when_read(tmp_path):
    (tmp_path / "r.toml").write_text('[sites]\na = "SHA256:0011"\nb = "SHA256:' + "ab" * 16 + '"\nc = "SHA256:'
                                     + "ab" * 16 + '"\n[extra]\n')
    with pytest.raises(ConfigError) as err:
        load_roster(tmp_path / "r.toml")
    text = str(err.value)
    assert "sites.a: expected a key fingerprint" in text and "sites.c and sites.b have the same key" in text
    assert "unknown table(s) extra" in text
    _, public = make_site_keypair()
    assert fingerprint(public).startswith("SHA256:")
