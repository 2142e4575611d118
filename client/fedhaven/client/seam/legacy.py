"""Flower's legacy FitIns/FitRes records and SecAgg+ records as the site's ClientApp mods read and write them."""

from __future__ import annotations

import hashlib
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common import FitRes, NDArrays, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.common.serde import recorddict_to_proto
from flwr.compat.common import recorddict_compat as compat

#: Flower's legacy FitIns config record (`recorddict_compat`: f"{ins_str}.config"): present only in messages that
#: carry a training task; under SecAgg+ only the collect-masked-vectors stage carries it.
FITINS_CONFIG = "fitins.config"
#: The field of `secaggplus_mod`'s persisted `SecAggPlusState` holding the coordinator's max_weight.
_MAX_WEIGHT = "max_weight"


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


def content_sha256(*, msg: Message) -> str:
    """SHA-256 of a message's content as serialised for the wire: what the ledger calls 'the bytes sent'.

    The definition is the ledger's and stays as it is: the deterministic serialisation of
    `recorddict_to_proto(content)`. (In 1.42 Flower actually sends the deflated object tree,
    whose content address is the public `content.object_id`; switching would change the hash.)
    """
    return hashlib.sha256(recorddict_to_proto(msg.content).SerializeToString(deterministic=True)).hexdigest()
