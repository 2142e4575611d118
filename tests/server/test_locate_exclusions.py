"""A site located as bad stays out of the run after a resume: its exclusion (round, node, evidence) is kept in the
coordinator's checkpoint, read back without unpickling, and the client manager leaves it out by name or node."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from flwr.server.client_proxy import ClientProxy

from fedhaven.server.checkpoints import load_checkpoint
from fedhaven.server.locate.exclusions import Exclusions
from fedhaven.server.recorder import RunRecorder
from fedhaven.server.seam.legacy import BoundedClientManager
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import ModelConfig, RunConfig
from fedhaven.shared.weights import get_weights

SPEC = InputSpec(1, 8, 3)
RUN = RunConfig(model=ModelConfig(name="lenet"), rounds=4)
GROUPS = [(("s0", "s1", "s2", "s3"), False), (("s0", "s1", "s4", "s5"), True), (("s0", "s1", "s3", "s4", "s5"), True)]


class _Proxy(ClientProxy):
    def get_properties(self, *a, **k): ...
    def get_parameters(self, *a, **k): ...
    def fit(self, *a, **k): ...
    def evaluate(self, *a, **k): ...
    def reconnect(self, *a, **k): ...


def _weights() -> list[np.ndarray]:
    return get_weights(build_model(cfg=RUN.model, spec=SPEC, seed=0, dp=False))


def _located() -> Exclusions:
    ex = Exclusions()
    ex.add(site="s2", server_round=1, node=1002, reason="the update is not a model update (NaN)", groups=GROUPS)
    return ex


def _checkpoint(tmp_path, server_round: int, excluded: list) -> None:
    rec = RunRecorder(run_dir=tmp_path, run=RUN, input_spec=SPEC, classes=("a", "b", "c"))
    rec.checkpoint(server_round=server_round, weights=_weights(), strategy={}, excluded=excluded)


def test_the_exclusion_and_its_evidence_come_back_from_the_checkpoint(tmp_path):
    _checkpoint(tmp_path, 1, _located().to_blob())
    ckpt, skipped = load_checkpoint(run_dir=tmp_path, run=replace(RUN, resume_from=str(tmp_path)), input_spec=SPEC)
    assert skipped == [] and ckpt.round == 1
    back = Exclusions.from_blob(ckpt.blob["excluded"])
    (e,) = back.by_site.values()
    assert (e.site, e.server_round, e.node, e.reason) == ("s2", 1, 1002, "the update is not a model update (NaN)")
    assert e.groups == tuple(GROUPS)
    assert e.summary() == "s2 (located in round 1: 1 of 1 re-masked group(s) with it failed, 2 of 2 without it passed)"


def test_a_checkpoint_without_exclusions_reads_as_none_and_a_forged_one_is_skipped(tmp_path):
    _checkpoint(tmp_path, 1, [])
    _checkpoint(tmp_path, 2, [{"site": "s2", "round": "one", "node": 1002, "reason": "x", "groups": []}])
    ckpt, skipped = load_checkpoint(run_dir=tmp_path, run=RUN, input_spec=SPEC)
    assert ckpt.round == 1 and len(skipped) == 1 and "round-002.pt unreadable" in skipped[0]
    assert "no valid 'round'" in skipped[0]
    assert not Exclusions.from_blob(ckpt.blob["excluded"])
    assert not Exclusions.from_blob(None)  # a checkpoint written before exclusions were kept


@pytest.mark.parametrize(("names", "left_out"), [
    ({1002: "s2"}, {"1002"}),  # the same node, its name known: left out
    ({7: "s2", 1002: "s3"}, {"7"}),  # a new node (a resumed simulation, a re-registered site) known by its name
    ({1002: "s9"}, set()),  # the node id came back with another site's name: the name decides
    ({}, {"1002"}),  # names not known yet: the node it was located on
])
def test_the_client_manager_leaves_the_located_site_out(names, left_out):
    ex = Exclusions.from_blob(_located().to_blob())
    cm = BoundedClientManager(timeout=0.5, min_sites=2)
    cm.leave_out = ex.predicate(names.get)
    for cid in ("1001", "1002", "7", "8"):
        cm.register(_Proxy(cid))
    assert cm.num_available() == 4 - len(left_out)
    picked = {c.cid for c in cm.sample(4 - len(left_out), min_num_clients=2)}
    assert picked == {"1001", "1002", "7", "8"} - left_out
