"""The site's own bound on its model delta: applied before anything leaves the site, recorded in its ledger,
and the update sent as the delta (or rotated delta) the coordinator's [robust] asks for."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client.types import Site, SiteInfo
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import SIMULATION_POLICY, DPConfig, ModelConfig, SitePolicy, TrainConfig, auto_update_norm
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.updates import decode_delta, l2_norm, num_params
from fedhaven.shared.weights import get_weights

WEIGHTS = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 3), seed=0))




def _task(**robust) -> TaskSpec:
    return TaskSpec(server_round=1, planned_rounds=2, input=InputSpec(1, 8, 3), classes=("a", "b", "c"),
                    model=ModelConfig(name="lenet"), train=TrainConfig(local_epochs=2, batch_size=32, lr=0.5),
                    dp=DPConfig(target_epsilon=4.0), **robust)


def _train(app_for, tmp_path, images, task: TaskSpec, policy: SitePolicy = SIMULATION_POLICY):
    sent, entry, _ = _reply(app_for, tmp_path, images, task, policy)
    return sent, entry


def _reply(app_for, tmp_path, images, task: TaskSpec, policy: SitePolicy = SIMULATION_POLICY):
    """(the arrays sent, the site's ledger entry for them, the metrics sent)"""
    info = SiteInfo(name="hospital-a", policy=policy, state_dir=tmp_path / "state")
    info.ledger().init(site="hospital-a")
    app = app_for(Site(info=info, data=images))
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(WEIGHTS), task_to_config(task)), True)
    reply = app(Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN),
                Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}))
    assert not reply.has_error(), reply.error
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    return parameters_to_ndarrays(res.parameters), info.ledger().entries()[-1], res.metrics


def test_the_coordinators_bound_is_applied_to_the_delta_sent_and_recorded_in_the_ledger(tmp_path, synthetic_images,
                                                                                        client_app_for):
    app_for, images = client_app_for, synthetic_images
    free, entry = _train(app_for, tmp_path / "free", images, _task(encoding="delta"))
    assert entry.update_l2_norm == pytest.approx(l2_norm(free), rel=1e-5)  # unbounded: what DP-SGD made
    assert entry.update_l2_norm > 0.05
    bound = entry.update_l2_norm / 4
    sent, entry, metrics = _reply(app_for, tmp_path / "bound", images, _task(encoding="delta", update_norm=bound))
    assert [a.shape for a in sent] == [a.shape for a in WEIGHTS]  # the delta, shaped as the model
    assert l2_norm(sent) <= bound and l2_norm(sent) == pytest.approx(bound, rel=1e-4)
    assert entry.update_l2_norm <= bound and entry.update_l2_norm == pytest.approx(bound, rel=1e-4)
    # the norm of what DP-SGD released is reported (post-processing): what the coordinator's bound follows
    assert metrics["update_norm"] == pytest.approx(entry.update_l2_norm)
    no_dp = replace(_task(encoding="delta"), dp=DPConfig(enabled=False))
    *_, metrics = _reply(app_for, tmp_path / "nodp", images, no_dp)
    assert "update_norm" not in metrics  # without DP the norm of a single update is not released


def test_the_site_policy_bound_holds_whatever_the_coordinator_asks(tmp_path, synthetic_images, client_app_for):
    policy = replace(SIMULATION_POLICY, max_update_norm=0.01)
    app_for, images = client_app_for, synthetic_images
    sent, entry = _train(app_for, tmp_path, images, _task(encoding="delta", update_norm=100.0), policy)
    assert l2_norm(sent) <= 0.01 and entry.update_l2_norm <= 0.01
    sent, _ = _train(app_for, tmp_path / "none", images, _task(), policy)  # full weights, still bounded
    assert l2_norm([s - w for s, w in zip(sent, WEIGHTS, strict=True)]) <= 0.01 * (1 + 1e-5)
    # a deployed site's default: "auto", 0.1 * sqrt(parameters)
    assert SitePolicy().update_bound(num_params(WEIGHTS)) == auto_update_norm(num_params(WEIGHTS))


def test_under_secagg_the_delta_travels_rotated_and_padded(tmp_path, synthetic_images, client_app_for):
    task = _task(encoding="rotated", update_norm=0.2, rotation_seed=1234)
    sent, entry = _train(client_app_for, tmp_path, synthetic_images, task)
    n = num_params(WEIGHTS)
    assert len(sent) == 1 and sent[0].shape == (1 << (n - 1).bit_length(),)
    delta, padding = decode_delta(sent, WEIGHTS, encoding="rotated", seed=1234)
    assert padding < 1e-5 and l2_norm(delta) == pytest.approx(entry.update_l2_norm, rel=1e-4)
    assert l2_norm(delta) <= 0.2 * (1 + 1e-5)
    # spread evenly: SecAgg+'s per-coordinate clip (3 x the bound's root mean square) leaves it all but untouched
    c = 3 * 0.2 / np.sqrt(sent[0].size)
    clipped = np.clip(sent[0], -c, c)
    assert np.mean(np.abs(sent[0]) > c) < 0.01
    assert np.linalg.norm(sent[0] - clipped) < 0.05 * np.linalg.norm(sent[0])  # Gaussian tails: ~2%
