"""The [robust] guard under real SecAgg+ on Flower's simulation engine: sites send deltas, SecAgg+ clips each
coordinate at the guard's range, and a rejected round leaves Flower's global model as it was."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedhaven.server.flower_legacy import LegacyFederation, build_strategy
from fedhaven.server.guard import UpdateGuard
from fedhaven.shared.config import parse
from fedhaven.shared.schema import RunConfig

pytestmark = pytest.mark.slow

SHAPES = [(6, 4), (5,)]
BOUND = 1.0


class DeltaClient(NumPyClient):
    """A site that sends a fixed delta (the [robust] encoding without rotation): `scale` times a small step."""

    def __init__(self, pid: int, scale: float) -> None:
        self.pid, self.scale = pid, scale

    def fit(self, parameters, config):
        step = [np.full(s, 0.02 * self.scale, dtype=np.float32) for s in SHAPES]
        return step, 100, {"site": f"s{self.pid}"}


def _rounds(scales: list[float]) -> list:
    """Two rounds of 4 sites; in round 2 site 0 sends its step times `scales[1]`."""
    run = parse(RunConfig, {"min_sites": 4, "secagg": {"num_shares": 3, "reconstruction_threshold": 2},
                            "robust": {"max_update_norm": BOUND, "rotate": False, "loss_factor": 2.0}})
    out: list = []
    app = ServerApp()

    @app.main()
    def main(grid, context):
        initial = [np.zeros(s, dtype=np.float32) for s in SHAPES]

        def evaluator(weights):  # held-out loss: explodes once the first weight passes 0.05
            return 1.0 + 1000 * max(0.0, float(weights[0][0, 0]) - 0.05), 0.5

        guard = UpdateGuard(run=run, initial=initial, evaluator=evaluator, max_weight=100.0)
        strategy = build_strategy(run=run, initial=initial, fit_config=lambda r: {"round": r}, guard=guard)
        fed = LegacyFederation(grid=grid, context=context, run=run, strategy=strategy, max_weight=100.0)
        fed.set_secagg_clipping(guard.coordinate_range)
        try:
            for rnd in (1, 2):
                guard.begin(rnd)
                outcome = fed.fit_round(rnd)
                out.append((outcome, guard.end(), fed.weights()))
        finally:
            fed.close()

    def client_fn(context):
        pid = int(context.node_config["partition-id"])
        return _Stateful(pid, scales).to_client()

    run_simulation(server_app=app, client_app=ClientApp(client_fn=client_fn, mods=[secaggplus_mod]),
                   num_supernodes=4, backend_config={"client_resources": {"num_cpus": 1},
                                                     "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert len(out) == 2, "the ServerApp did not finish"
    return out


class _Stateful(NumPyClient):
    def __init__(self, pid: int, scales: list[float]) -> None:
        self.pid, self.scales = pid, scales

    def fit(self, parameters, config):
        scale = self.scales[int(config["round"]) - 1] if self.pid == 0 else 1.0
        return DeltaClient(self.pid, scale).fit(parameters, config)


def test_a_boosted_site_is_bounded_by_secagg_and_an_exploding_round_rejected_keeping_flowers_model():
    (first, v1, w1), (second, v2, w2) = _rounds([1.0, 1e6])
    # round 1: every site steps 0.02; the aggregate is their mean
    assert v1.rejected is None and first.weights is not None
    assert np.allclose(w1[0], 0.02, atol=1e-4) and v1.update_norm == pytest.approx(0.02 * np.sqrt(29), rel=1e-3)
    # round 2: site 0 steps a million times more; SecAgg+ clips each of its coordinates at the guard's range
    # c = 2 * bound / sqrt(29 parameters), so the aggregate moves by (c + 3 * 0.02) / 4 per weight, not by 250,000
    c = 2 * BOUND / np.sqrt(29)
    assert v2.update_norm == pytest.approx((c + 3 * 0.02) / 4 * np.sqrt(29), rel=1e-3)
    # that still raises the first weight past 0.05: the held-out loss explodes, the round is rejected and
    # Flower's global model is the one of round 1
    assert second.weights is None and "held-out loss" in v2.rejected
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2, strict=True))
