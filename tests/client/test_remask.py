"""A site asked to mask its last update again for a subgroup (locating a bad site): it answers only with the update
its ledger recorded, trains nothing, spends nothing, and refuses groups that would single it out (the test plays
the coordinator)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client import remask
from fedhaven.client.types import Code, Site, SiteInfo, TaskRefused
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.remask import ENTRY_KEY, MEMBERS_KEY, ROUND_KEY, SETUP_RECORD, RemaskRequest, isolates
from fedhaven.shared.schema import SIMULATION_POLICY, DPConfig, ModelConfig, TrainConfig
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.weights import get_weights
from fedhaven.shared.witness import LEDGER_HASH

from .conftest import OneSite

WEIGHTS = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 3), seed=0))
RANGES = {Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0}
SITES = tuple(f"site-{c}" for c in "abcdefgh")
ME = "site-a"


def _task(server_round: int) -> TaskSpec:
    return TaskSpec(server_round=server_round, planned_rounds=3, input=InputSpec(1, 8, 3), classes=("a", "b", "c"),
                    model=ModelConfig(name="lenet"), train=TrainConfig(local_epochs=1, batch_size=32, lr=0.3),
                    dp=DPConfig(target_epsilon=4.0))


def _fit(server_round: int, extra: dict | None = None, *, secagg: bool = False) -> Message:
    config = {**task_to_config(_task(server_round)), **(extra or {})}
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(WEIGHTS), config), True)
    if secagg:  # what Flower's SecAgg+ mod leaves of its record for the inner mods (the stage key popped)
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _setup(req: RemaskRequest | None) -> Message:
    content = RecordDict()
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({
        Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: len(req.members) if req else 8, Key.SHARE_NUMBER: 3,
        Key.THRESHOLD: 2, **RANGES})
    if req is not None:
        content.config_records[SETUP_RECORD] = ConfigRecord(req.to_record())
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN, group_id="1")


@pytest.fixture
def trained(tmp_path, synthetic_images, client_app_for):
    """(ClientApp, its context, ledger, site provider, the update it sent in round 1) of a site with a ledger."""
    info = SiteInfo(name=ME, policy=replace(SIMULATION_POLICY, min_sites=3), state_dir=tmp_path / "state")
    info.ledger().init(site=ME)
    site = Site(info=info, data=synthetic_images)
    app, ctx = client_app_for(site), Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply = app(_fit(1), ctx)
    assert not reply.has_error(), reply.error
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    return app, ctx, info.ledger(), OneSite(site), res


def _refused(reply: Message) -> str:
    assert reply.has_error() and reply.error.code == int(Code.SECAGG), reply
    return reply.error.reason


def _req(*members: str, rnd: int = 1) -> RemaskRequest:
    return RemaskRequest(rnd, tuple(sorted(members)), SITES)


def test_the_site_re_masks_exactly_the_update_its_ledger_recorded_without_training(trained):
    app, ctx, ledger, sites, sent = trained
    entries = ledger.entries()
    req = _req(ME, "site-b", "site-c", "site-d")
    assert not app(_setup(req), ctx).has_error()
    config = {ROUND_KEY: 1, ENTRY_KEY: sent.metrics[LEDGER_HASH], MEMBERS_KEY: req.digest}

    def never(msg, ctx):
        raise AssertionError("the site trained again")

    reply = remask.mod(sites)(_fit(1, config, secagg=True), ctx, never)
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    for a, b in zip(parameters_to_ndarrays(res.parameters), parameters_to_ndarrays(sent.parameters), strict=True):
        np.testing.assert_array_equal(a, b)
    assert res.num_examples == sent.num_examples and dict(res.metrics) == {"site": ME}  # no training metrics
    assert ledger.entries() == entries  # no new entry: no spend

    def why(cfg: dict, *, secagg: bool = True) -> str:
        with pytest.raises(TaskRefused) as err:
            remask.mod(sites)(_fit(1, {**config, **cfg}, secagg=secagg), ctx, never)
        assert err.value.code == Code.SECAGG
        return str(err.value)

    assert "not this site's newest" in why({ENTRY_KEY: entries[0].hash})
    assert "another group or round" in why({MEMBERS_KEY: _req(ME, "site-b", "site-c").digest})
    assert "not under SecAgg+" in why({}, secagg=False)


def test_the_kept_update_is_dropped_when_the_next_round_trains(trained):
    app, ctx, _, sites, _ = trained
    assert not app(_fit(2), ctx).has_error()
    assert "keeps no update of round 1" in _refused(app(_setup(_req(ME, "site-b", "site-c")), ctx))


def test_groups_below_the_site_minimum_or_without_it_are_refused(trained):
    app, ctx, *_ = trained
    assert "fewer than this site's minimum (policy.locate_min_group = 3)" in _refused(
        app(_setup(_req(ME, "site-b")), ctx))
    assert "not on the group's member list" in _refused(app(_setup(_req("site-b", "site-c", "site-d")), ctx))
    assert "keeps no update of round 2" in _refused(app(_setup(_req(ME, "site-b", "site-c", rnd=2)), ctx))


def test_a_group_that_with_the_ones_joined_would_single_the_site_out_is_refused(trained):
    """Joined {a,b,c,d}; asked {a,e,f,g}: the two sums less the round's (a..h) leave u_a - u_h."""
    app, ctx, *_ = trained
    assert not app(_setup(_req(ME, "site-b", "site-c", "site-d")), ctx).has_error()
    why = _refused(app(_setup(_req(ME, "site-e", "site-f", "site-g")), ctx))
    assert "would single its update out among fewer than 3 sites" in why
    assert not app(_setup(_req(ME, "site-b", "site-e", "site-f", "site-c")), ctx).has_error()


def test_isolation_is_the_span_of_the_sums():
    rows = [SITES, ("site-a", "site-b", "site-c", "site-d"), ("site-a", "site-e", "site-f", "site-g")]
    assert isolates(rows, "site-a", k=3) and not isolates(rows, "site-b", k=3)
    assert not isolates(rows[:2], "site-a", k=3) and isolates(rows[:2], "site-a", k=5)
