"""The ClientApp called in-process with real Flower messages: train, account across rounds, refuse bad tasks."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedhaven.client.flower_app import load_privacy
from fedhaven.client.types import Site, SiteInfo, TaskRefused
from fedhaven.shared import refusal
from fedhaven.shared.accounting import PrivacyStep, epsilon
from fedhaven.shared.config import ConfigError
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import DPConfig, ModelConfig, TrainConfig
from fedhaven.shared.task import TaskSpec, task_to_config
from fedhaven.shared.weights import get_weights


def _task(server_round: int, **dp) -> TaskSpec:
    return TaskSpec(server_round=server_round, planned_rounds=4, input=InputSpec(1, 8, 3), classes=("a", "b", "c"),
                    model=ModelConfig(name="lenet"), train=TrainConfig(local_epochs=1, batch_size=32, lr=0.3),
                    dp=DPConfig(target_epsilon=2.0, **dp))


def _fit_message(weights, task: TaskSpec) -> Message:
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), task_to_config(task)), True)
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})



@pytest.fixture
def app_and_weights(synthetic_images, client_app_for):
    app = client_app_for(Site(info=SiteInfo(name="hospital-a"), data=synthetic_images))
    weights = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 3), seed=0))
    return app, weights


def test_fit_returns_weights_examples_and_metrics_and_epsilon_accumulates(app_and_weights):
    app, weights = app_and_weights
    ctx = _context()
    eps = []
    for rnd in (1, 2):
        reply = app(_fit_message(weights, _task(rnd)), ctx)
        assert not reply.has_error(), reply.error
        res = compat.recorddict_to_fitres(reply.content, keep_input=True)
        assert res.status.code == Code.OK
        new = parameters_to_ndarrays(res.parameters)
        assert [w.shape for w in new] == [w.shape for w in weights]
        assert any(not np.array_equal(a, b) for a, b in zip(new, weights, strict=True))
        assert res.num_examples == 240
        assert res.metrics["site"] == "hospital-a"
        for key in ("loss", "accuracy", "epsilon", "noise_multiplier", "sample_rate", "steps"):
            assert key in res.metrics
        eps.append(res.metrics["epsilon"])
        weights = new
    assert 0 < eps[0] < eps[1] <= 2.0
    # the site's history is kept in Flower's context and reproduces the reported epsilon
    privacy = load_privacy(ctx)
    assert len(privacy.history.steps) == 2
    assert epsilon(history=privacy.history, delta=1e-5) == pytest.approx(eps[1])
    # the noise is chosen each round so that the rounds still planned end at or under the target
    z, q, steps = res.metrics["noise_multiplier"], res.metrics["sample_rate"], res.metrics["steps"]
    planned = epsilon(history=list(privacy.history.steps) + [PrivacyStep(z, q, steps * 2)], delta=1e-5)
    assert planned == pytest.approx(2.0, abs=0.01) and planned <= 2.0


def test_fixed_noise_and_no_dp(app_and_weights):
    app, weights = app_and_weights
    reply = app(_fit_message(weights, _task(1, noise_multiplier=1.7)), _context())
    assert compat.recorddict_to_fitres(reply.content, True).metrics["noise_multiplier"] == 1.7
    task = _task(1)
    reply = app(_fit_message(weights, replace(task, dp=replace(task.dp, enabled=False))), _context())
    metrics = compat.recorddict_to_fitres(reply.content, True).metrics
    assert math.isinf(metrics["epsilon"]) and metrics["noise_multiplier"] == 0.0


def test_task_that_does_not_fit_the_data_is_refused(app_and_weights, answer):
    app, _ = app_and_weights
    task = replace(_task(1), input=InputSpec(1, 28, 10), classes=tuple(str(i) for i in range(10)))
    weights = get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=task.input))
    # the outermost mod answers with Flower's error reply, carrying the refusal's code
    with pytest.raises(TaskRefused) as err:
        answer(app(_fit_message(weights, task), _context()))
    assert err.value.code == refusal.Code.DATA and "expects 1x28x28 images" in str(err.value)
    assert "class 'a' of this site is not among" in str(err.value)


def test_malformed_task_lists_every_problem(app_and_weights):
    app, weights = app_and_weights
    config = task_to_config(_task(1))
    config["fedhaven.train.lr"] = -1.0
    config["fedhaven.dp.accountant"] = "magic"
    del config["fedhaven.planned_rounds"]
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), config), True)
    with pytest.raises(ConfigError) as err:
        app(Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN), _context())
    assert len(err.value.problems) == 3
    for part in ("train.lr: must be > 0", "dp.accountant", "planned_rounds: missing"):
        assert part in str(err.value)


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_central_dp_clipping_runs_under_secagg(clipping):
    """Flower's SecAgg+ mod pops the stage key before the inner mods run: the central-DP mod must still see the
    task, clip the update and (adaptive) add the clipped bit. It used to skip both: unclipped updates were
    aggregated as if clipped, and adaptive clipping failed in round 1 with "norm_bit not returned by client"."""
    from flwr.app import ConfigRecord
    from flwr.common import FitRes, Status
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

    from fedhaven.client.flower_app import _central_dp_mod

    start = [np.zeros((20,), dtype=np.float32)]
    config = {**task_to_config(replace(_task(1), central_dp=clipping)), KEY_CLIPPING_NORM: 1.0}
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(start), config), True)
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []})
    msg = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)

    def train(m, ctx):  # the site's update: norm 10 before clipping
        res = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters([np.full(20, 10 / 20 ** 0.5,
                                                                                            dtype=np.float32)]),
                     num_examples=1, metrics={})
        return Message(compat.fitres_to_recorddict(res, True), reply_to=m)

    reply = _central_dp_mod(msg, _context(), train)
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert np.linalg.norm(parameters_to_ndarrays(res.parameters)[0]) == pytest.approx(1.0, rel=1e-5)
    assert (KEY_NORM_BIT in res.metrics) == (clipping == "adaptive")
