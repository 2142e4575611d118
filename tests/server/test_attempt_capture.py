"""What the coordinator keeps from an attempt without aggregate: the sites that trained, and those that went silent."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, Error, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from fedhaven.server.attendance import Attendance
from fedhaven.server.flower_legacy import CheckedSecAggPlus, RecordingStrategy, _ReplyWatch
from fedhaven.server.witnesses import SiteWitnesses
from fedhaven.shared import refusal
from fedhaven.shared.witness import LEDGER_HASH, LEDGER_PREV_HASH, LEDGER_SEQ, Witness


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id, self.cid = node_id, str(node_id)


def _fitres(site: str, eps: float) -> FitRes:
    return FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters([np.zeros(2, dtype=np.float32)]),
                  num_examples=10, metrics={"site": site, "epsilon": eps, LEDGER_SEQ: 4, LEDGER_PREV_HASH: "e" * 64,
                                            LEDGER_HASH: "f" * 64})


def test_sites_that_trained_are_kept_when_unmasking_fails():
    wf = CheckedSecAggPlus(num_shares=3, reconstruction_threshold=2, max_weight=10.0, timeout=5)

    def collect(grid, context, state):
        state.legacy_results += [(Proxy(5), _fitres("a", 2.0)), (Proxy(6), _fitres("b", 3.0))]
        return True

    wf.setup_stage = wf.share_keys_stage = lambda g, c, s: True
    wf.collect_masked_vectors_stage = collect
    wf.unmask_stage = lambda g, c, s: False
    wf(None, None)
    assert wf.halted_stage == "unmask"
    assert [(n, m["site"], m["epsilon"]) for n, _, m in wf.collected] == [(5, "a", 2.0), (6, "b", 3.0)]


def _task_message(node: int) -> Message:
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([np.zeros(1)]), {"x": 1}), True)
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(to: Message, *, error: str | None = None, code: int = 0) -> Message:
    if error is not None:
        reply = Message(Error(code=code, reason=error), reply_to=to)
    else:
        reply = Message(RecordDict(), reply_to=to)
    return reply


class Grid:
    """Node 1 trains, 2 refuses (a coded refusal), 3 crashes after training may have started with a message that
    reads like a refusal, 4 never answers."""

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            node = m.metadata.dst_node_id
            if node == 1:
                out.append(_reply(m))
            elif node == 2:
                out.append(_reply(m, error="site b refused the task: budget", code=int(refusal.Code.SITE_BUDGET)))
            elif node == 3:  # the words do not matter, the code does
                out.append(_reply(m, error="node 3 went offline (nothing was trained or sent)"))
        return out


def test_nodes_that_may_have_trained_without_a_reply_are_named():
    attendance = Attendance()
    watch = _ReplyWatch(Grid(), attendance)
    watch.send_and_receive([_task_message(n) for n in (1, 2, 3, 4)], timeout=1.0)
    assert attendance.unanswered == [3, 4] and attendance.asked == {1, 2, 3, 4} and attendance.settled == {1, 2}


def test_each_site_gets_its_own_witness_with_its_task():
    from flwr.server.strategy import FedAvg

    witnesses = SiteWitnesses()
    witnesses.record(node_id=5, witness=Witness.from_metrics(_fitres("a", 1.0).metrics))
    inner = FedAvg()
    ins = FitIns(ndarrays_to_parameters([np.zeros(1)]), {"fedhaven.server_round": 1})
    inner.configure_fit = lambda *a: [(Proxy(5), ins), (Proxy(6), ins)]  # one FitIns object shared, as FedAvg does
    strategy = RecordingStrategy(inner)
    strategy.witnesses = witnesses
    (_, a), (_, b) = strategy.configure_fit(1, None, None)
    # the entry's own hash goes back with the task: the site must hold exactly that entry
    assert Witness.from_config(a.config) == Witness(site="a", seq=4, prev_hash="e" * 64, hash="f" * 64)
    assert Witness.from_config(b.config) is None and Witness.from_config(ins.config) is None


def test_witnesses_survive_in_the_coordinators_state_directory(tmp_path):
    path = tmp_path / "runs" / "ledger-witnesses.json"
    SiteWitnesses(path).record(node_id=9, witness=Witness(site="h", seq=1, prev_hash="a" * 64))
    SiteWitnesses(path).record(node_id=9, witness=Witness(site="h", seq=2, prev_hash="b" * 64))  # a later run
    assert SiteWitnesses(path).for_node(9) == Witness(site="h", seq=2, prev_hash="b" * 64)
    assert SiteWitnesses(path).for_node(8) is None
    SiteWitnesses(path).record(node_id=9, witness=Witness(site="h", seq=3, prev_hash="b" * 64, hash="c" * 64))
    assert SiteWitnesses(path).for_node(9) == Witness(site="h", seq=3, prev_hash="b" * 64, hash="c" * 64)


def test_a_witness_file_written_before_entry_hashes_were_kept_still_reads(tmp_path):
    """ledger-witnesses.json of an older coordinator has no `hash`: its witnesses compare the linked hash only."""
    import json

    path = tmp_path / "ledger-witnesses.json"
    path.write_text(json.dumps({"sites": {"h": {"seq": 2, "prev_hash": "b" * 64, "node_id": 9, "time": 1.0}}}))
    seen = SiteWitnesses(path).for_node(9)
    assert seen == Witness(site="h", seq=2, prev_hash="b" * 64) and seen.key() == f"2:{'b' * 64}"
    assert Witness.from_config(seen.to_config()) == seen
    # a reply from a site older than `ledger_hash` still makes a witness; one without any hash does not
    assert Witness.from_metrics({"site": "h", LEDGER_SEQ: 1, LEDGER_PREV_HASH: "a" * 64}).hash == ""
    assert Witness.from_metrics({"site": "h", LEDGER_SEQ: 1}) is None
