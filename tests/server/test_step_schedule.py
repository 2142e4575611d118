"""The coordinator's scheduled step: new = sent + f(round) * (aggregate - sent), a cosine from 1 to the floor."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedhaven.server.flower_legacy import ScheduledStep, build_strategy, step_fraction
from fedhaven.shared.schema import RobustConfig, RunConfig, StrategyConfig


def test_fraction_is_one_then_decays_to_the_floor():
    assert step_fraction(schedule="constant", server_round=7, rounds=10, floor=0.1) == 1.0
    f = [step_fraction(schedule="cosine", server_round=r, rounds=10, floor=0.1) for r in range(1, 11)]
    assert f[0] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f, f[1:]))
    assert step_fraction(schedule="cosine", server_round=12, rounds=10, floor=0.1) == pytest.approx(0.1)  # resumed past


def _res(arrays, n):
    return SimpleNamespace(node_id=n), FitRes(status=Status(code=Code.OK, message=""),
                                              parameters=ndarrays_to_parameters(arrays), num_examples=n,
                                              metrics={"site": f"site-{n}"})


def test_step_moves_a_fraction_of_the_aggregate_from_the_model_sent():
    sent = [np.zeros((2, 2), np.float32), np.ones(3, np.float32)]
    # sites send whole models here: [robust] off (with it, they send deltas the guard turns back into models)
    run = RunConfig(rounds=3, min_sites=2, strategy=StrategyConfig(step_schedule="cosine", step_floor=0.2),
                    robust=RobustConfig(enabled=False))
    rec = build_strategy(run=run, initial=sent, fit_config=lambda r: {})
    step = rec.inner
    assert isinstance(step, ScheduledStep)
    step.inner.configure_fit = lambda *args: []  # Flower's would wait for sites to connect
    step.configure_fit(3, ndarrays_to_parameters(sent), None)
    a = [np.full((2, 2), 2.0, np.float32), np.full(3, 3.0, np.float32)]
    b = [np.full((2, 2), 4.0, np.float32), np.full(3, 5.0, np.float32)]
    params, _ = rec.aggregate_fit(3, [_res(a, 1), _res(b, 3)], [])
    out = parameters_to_ndarrays(params)
    # FedAvg gives 3.5 and 4.5; the last round takes the floor, 0.2, of the change
    assert np.allclose(out[0], 0.2 * 3.5) and np.allclose(out[1], 1 + 0.2 * 3.5)
    assert rec.inner.inner.inner.__class__.__name__ == "FedAvg"  # step > guard > rule


def test_constant_adds_no_wrapper():
    rec = build_strategy(run=RunConfig(), initial=[np.zeros(2, np.float32)], fit_config=lambda r: {})
    assert not isinstance(rec.inner, ScheduledStep)
