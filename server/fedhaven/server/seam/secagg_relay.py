"""The sites' signed SecAgg+ keys relayed to their neighbours, around Flower's SecAgg+ workflow (which drops them).

Each deployed site signs its SecAgg+ public keys with its site key and sends the
proof beside them in its setup reply (`fedhaven.shared.secagg_keys`). Flower's
workflow forwards only the bare keys at share-keys; this Grid wrapper remembers
each node's proof from the setup replies and adds the proofs of a node's
neighbours to its share-keys message. It forwards and checks nothing itself: a
site with a roster checks each proof and refuses a neighbour without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ConfigRecord, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid

from fedhaven.server.delegating_grid import DelegatingGrid
from fedhaven.shared.remask import SETUP_RECORD
from fedhaven.shared.secagg_keys import NEIGHBOURS_RECORD, PROOF_RECORD, KeyProof


def _stage(msg: Message) -> object:
    cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if cfg is None else cfg.get(Key.STAGE)


class ProofRelay(DelegatingGrid):
    """Delegates to a Flower Grid; `send_and_receive` also carries the sites' key proofs from setup to share-keys."""

    def __init__(self, inner: Grid, *, setup_record: dict[str, Any] | None = None) -> None:
        super().__init__(inner)
        self.proofs: dict[int, KeyProof] = {}
        self.setup_record = setup_record  # a re-mask round's group (`fedhaven.shared.remask`), sent with setup

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = _stage(messages[0]) if messages else None
        if stage == Stage.SETUP:
            self.proofs = {}
            if self.setup_record is not None:
                for msg in messages:
                    msg.content.config_records[SETUP_RECORD] = ConfigRecord(self.setup_record)
        elif stage == Stage.SHARE_KEYS:
            for msg in messages:
                self._attach(msg)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        if stage == Stage.SETUP:
            for reply in replies:
                record = None if reply.has_error() else reply.content.config_records.get(PROOF_RECORD)
                proof = None if record is None else KeyProof.from_record(record)
                if proof is not None:
                    self.proofs[reply.metadata.src_node_id] = proof
        return replies

    def _attach(self, msg: Message) -> None:
        cfg = msg.content.config_records[RECORD_KEY_CONFIGS]
        relayed = {k: self.proofs[int(k)].to_list() for k in cfg if k != Key.STAGE and k.lstrip("-").isdigit()
                   and int(k) in self.proofs}
        if relayed:
            msg.content.config_records[NEIGHBOURS_RECORD] = ConfigRecord(relayed)  # type: ignore[arg-type]
