"""Flower's legacy FitIns/FitRes records and SecAgg+ records as the site's ClientApp mods read and write them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common import FitRes, NDArrays, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.common.serde import recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat

#: Flower's legacy FitIns config record (`recorddict_compat`: f"{ins_str}.config"): present only in messages that
#: carry a training task; under SecAgg+ only the collect-masked-vectors stage carries it.
FITINS_CONFIG = "fitins.config"
#: Flower's legacy FitRes metrics record (`recorddict_compat`: f"{res_str}.metrics"); `secaggplus_mod` keeps it in
#: its collect-masked-vectors reply.
FITRES_METRICS = "fitres.metrics"
#: The field of `secaggplus_mod`'s persisted `SecAggPlusState` holding the coordinator's max_weight.
_MAX_WEIGHT = "max_weight"
#: Its field listing the node ids whose public keys were accepted at share-keys (`public_keys_dict`'s keys).
_NEIGHBOURS = "public_keys_dict:K"


def fit_config(*, content: RecordDict) -> dict[str, Any] | None:
    """The config of the FitIns a message's content carries, or None when it carries none.

    Recognised by its FitIns record, not by the SecAgg+ stage key: Flower's SecAgg+ mod pops
    that key before the inner mods see the message.
    """
    if FITINS_CONFIG not in content.config_records:
        return None
    return dict(compat.recorddict_to_fitins(content, keep_input=True).config)


def fitins_ndarrays(*, content: RecordDict) -> NDArrays:
    """The weights of the FitIns a message's content carries (what the coordinator sent)."""
    return parameters_to_ndarrays(compat.recorddict_to_fitins(content, keep_input=True).parameters)


def fitres_of(*, reply: Message) -> FitRes:
    """The FitRes a reply carries (what the NumPyClient's `fit` returned, after the inner mods)."""
    return compat.recorddict_to_fitres(reply.content, keep_input=True)


def set_fit_metric(*, reply: Message, key: str, value: str) -> None:
    """Add one metric to the FitRes a reply carries, in place: the rest of its content (under SecAgg+, the masked
    vector and Flower's SecAgg+ records) is kept as it is."""
    reply.content.config_records[FITRES_METRICS][key] = value


def with_fitres(*, reply: Message, res: FitRes) -> None:
    """Replace a reply's content with `res` in Flower's legacy FitRes record layout."""
    reply.content = compat.fitres_to_recorddict(res, keep_input=True)


def is_secagg(*, content: RecordDict) -> bool:
    """Whether a message belongs to Flower's SecAgg+ protocol (it carries SecAgg+'s config record)."""
    return RECORD_KEY_CONFIGS in content.config_records


def secagg_max_weight(*, ctx: Context) -> float:
    """The coordinator's SecAgg+ max_weight, from the state `secaggplus_mod` keeps in the context (0: none yet)."""
    state = ctx.state.config_records.get(RECORD_KEY_STATE)
    if state is None:
        return 0.0
    max_weight = state.get(_MAX_WEIGHT, 0.0)
    assert isinstance(max_weight, (int, float))  # SecAggPlusState.max_weight: a float
    return float(max_weight)


#: SecAgg+'s four stages, as its messages name them.
SETUP, SHARE_KEYS, COLLECT, UNMASK = Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK


@dataclass(frozen=True)
class SecAggRequest:
    """What one SecAgg+ message from the coordinator asks of the site, read before Flower's mod acts on it.

    `malformed` names what could not be read (Flower's mod would refuse it too). Per stage: setup carries
    the sample count, share count and threshold; share-keys the neighbours' public keys by node id (this
    site's included); collect the neighbours whose encrypted shares were forwarded; unmask the node ids
    said to be active and dead.
    """

    stage: str
    malformed: str = ""
    sample_num: int = 0
    share_num: int = 0
    threshold: int = 0
    neighbours: tuple[tuple[int, bytes, bytes], ...] = ()  # (node id, pk1, pk2)
    sources: tuple[int, ...] = ()  # collect: the neighbours whose shares reached this site
    active: tuple[int, ...] = ()
    dead: tuple[int, ...] = ()


def secagg_request(*, content: RecordDict) -> SecAggRequest | None:
    """The SecAgg+ request a message carries, or None when it is not a SecAgg+ message."""
    cfg = content.config_records.get(RECORD_KEY_CONFIGS)
    if cfg is None:
        return None
    stage = cfg.get(Key.STAGE)
    if stage == SETUP:
        nums = {k: cfg.get(k) for k in (Key.SAMPLE_NUMBER, Key.SHARE_NUMBER, Key.THRESHOLD)}
        bad = [k for k, v in nums.items() if type(v) is not int]
        if bad:
            return SecAggRequest(str(stage), malformed=f"setup without integer {', '.join(bad)}")
        return SecAggRequest(SETUP, sample_num=int(nums[Key.SAMPLE_NUMBER]),  # type: ignore[arg-type]
                             share_num=int(nums[Key.SHARE_NUMBER]),  # type: ignore[arg-type]
                             threshold=int(nums[Key.THRESHOLD]))  # type: ignore[arg-type]
    if stage == SHARE_KEYS:
        out: list[tuple[int, bytes, bytes]] = []
        for k, v in cfg.items():
            if k == Key.STAGE:
                continue
            if not (k.lstrip("-").isdigit() and isinstance(v, list) and len(v) == 2
                    and all(isinstance(b, bytes) for b in v)):
                return SecAggRequest(SHARE_KEYS, malformed=f"share-keys entry {k!r} is not a node id with two keys")
            out.append((int(k), bytes(v[0]), bytes(v[1])))  # type: ignore[arg-type]  # checked bytes above
        return SecAggRequest(SHARE_KEYS, neighbours=tuple(out))
    if stage == COLLECT:
        srcs = cfg.get(Key.SOURCE_LIST)
        if not (isinstance(srcs, list) and all(type(i) is int for i in srcs)):
            return SecAggRequest(COLLECT, malformed="collect without an integer source list")
        return SecAggRequest(COLLECT, sources=tuple(srcs))  # type: ignore[arg-type]  # checked int above
    if stage == UNMASK:
        lists = {k: cfg.get(k) for k in (Key.ACTIVE_NODE_ID_LIST, Key.DEAD_NODE_ID_LIST)}
        if not all(isinstance(v, list) and all(type(i) is int for i in v) for v in lists.values()):
            return SecAggRequest(UNMASK, malformed="unmask without integer active and dead lists")
        return SecAggRequest(UNMASK, active=tuple(lists[Key.ACTIVE_NODE_ID_LIST]),  # type: ignore[arg-type]
                             dead=tuple(lists[Key.DEAD_NODE_ID_LIST]))  # type: ignore[arg-type]
    return SecAggRequest(str(stage))


@dataclass(frozen=True)
class SecAggRound:
    """What `secaggplus_mod` keeps of the current SecAgg+ round: this site's node id, the threshold and share
    count accepted at setup, and the neighbours whose keys it accepted at share-keys (this site included)."""

    node_id: int = 0
    threshold: int = 0
    share_num: int = 0
    neighbours: frozenset[int] = frozenset()


def secagg_round(*, ctx: Context) -> SecAggRound:
    """The SecAgg+ round state `secaggplus_mod` keeps in the context (empty before the first setup)."""
    state = ctx.state.config_records.get(RECORD_KEY_STATE)
    if state is None:
        return SecAggRound()
    nbrs = state.get(_NEIGHBOURS, [])
    assert isinstance(nbrs, list)
    return SecAggRound(node_id=int(state.get("nid", 0)), threshold=int(state.get("threshold", 0)),  # type: ignore[arg-type]
                       share_num=int(state.get("share_num", 0)),  # type: ignore[arg-type]
                       neighbours=frozenset(int(n) for n in nbrs))


def setup_public_keys(*, reply: Message) -> tuple[bytes, bytes] | None:
    """The two public keys a site's setup reply carries (None: not a setup reply)."""
    cfg = reply.content.config_records.get(RECORD_KEY_CONFIGS) if not reply.has_error() else None
    pk1, pk2 = (cfg.get(Key.PUBLIC_KEY_1), cfg.get(Key.PUBLIC_KEY_2)) if cfg is not None else (None, None)
    return (pk1, pk2) if isinstance(pk1, bytes) and isinstance(pk2, bytes) else None


def content_sha256(*, msg: Message) -> str:
    """SHA-256 of a message's content as serialised for the wire: what the ledger calls 'the bytes sent'.

    The definition is the ledger's and stays as it is: the deterministic serialisation of
    `recorddict_to_proto(content)`. (In 1.42 Flower actually sends the deflated object tree,
    whose content address is the public `content.object_id`; switching would change the hash.)
    """
    return hashlib.sha256(recorddict_to_proto(msg.content).SerializeToString(deterministic=True)).hexdigest()


#: A site's last sent update (its FitRes parameters, Flower's legacy layout), kept in the context until its round ends.
_KEPT_PARAMS = "fedhaven.kept-update"


def keep_parameters(*, ctx: Context, reply: Message) -> None:
    """Keep the parameters of the FitRes `reply` carries in the context (replacing any kept before)."""
    ctx.state.array_records[_KEPT_PARAMS] = compat.parameters_to_arrayrecord(fitres_of(reply=reply).parameters,
                                                                             keep_input=True)


def forget_parameters(*, ctx: Context) -> None:
    if _KEPT_PARAMS in ctx.state.array_records:
        del ctx.state.array_records[_KEPT_PARAMS]


def kept_reply(*, ctx: Context, msg: Message, num_examples: int, metrics: dict[str, Any]) -> Message | None:
    """A reply to `msg` carrying the kept parameters as a FitRes (None: nothing kept)."""
    record = ctx.state.array_records.get(_KEPT_PARAMS)
    if record is None:
        return None
    from flwr.common import Code, Status

    res = FitRes(status=Status(code=Code.OK, message="Success"),
                 parameters=compat.arrayrecord_to_parameters(record, keep_input=True), num_examples=num_examples,
                 metrics=metrics)
    return Message(content=compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)
