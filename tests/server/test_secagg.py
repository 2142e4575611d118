"""SecAgg+ on Flower's simulation engine: the masked sum equals weighted FedAvg; halted rounds are caught."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedhaven.server.flower_legacy import CheckedSecAggPlus, LegacyFederation, build_strategy
from fedhaven.shared.config import parse
from fedhaven.shared.schema import RunConfig

pytestmark = pytest.mark.slow

SHAPES = [(6, 4), (5,)]
SIZES = [120, 300, 75, 210, 160]  # examples per site: the FedAvg weights


def _site_update(pid: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + pid)
    return [rng.normal(0, 0.5, s).astype(np.float32) for s in SHAPES]


class FixedClient(NumPyClient):
    """A site whose update is known in advance; `fail` makes it raise during training."""

    def __init__(self, pid: int, fail: bool) -> None:
        self.pid, self.fail = pid, fail

    def fit(self, parameters, config):
        if self.fail:
            raise RuntimeError(f"site {self.pid} crashed")
        return _site_update(self.pid), SIZES[self.pid], {"site": f"s{self.pid}"}


def _client_app(failing: frozenset[int] = frozenset(), *, secagg: bool = True) -> ClientApp:
    def client_fn(context):
        pid = int(context.node_config["partition-id"])
        return FixedClient(pid, pid in failing).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secagg else [])


def _simulate(client_app: ClientApp, *, secagg: dict | None, max_weight: float | None, sites: int = 5,
              workflow: CheckedSecAggPlus | None = None) -> list:
    # Flower's SecAgg+ arithmetic on full models: the [robust] delta encoding (tests/server/test_guard_secagg.py) off
    run = parse(RunConfig, {"min_sites": sites, "secagg": {"enabled": secagg is not None, **(secagg or {})},
                            "robust": {"enabled": False}})
    outcomes: list = []
    app = ServerApp()

    @app.main()
    def main(grid, context):
        initial = [np.zeros(s, dtype=np.float32) for s in SHAPES]
        strategy = build_strategy(run=run, initial=initial, fit_config=lambda r: {})
        fed = LegacyFederation(grid=grid, context=context, run=run, strategy=strategy, max_weight=max_weight)
        if workflow is not None:
            fed.secagg = workflow
        try:
            outcomes.append(fed.fit_round(1))
        finally:
            fed.close()

    run_simulation(server_app=app, client_app=client_app, num_supernodes=sites,
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert len(outcomes) == 1, "the ServerApp did not finish"
    return outcomes


def _weighted_mean(pids) -> list[np.ndarray]:
    total = sum(SIZES[p] for p in pids)
    return [sum(SIZES[p] * _site_update(p)[i] for p in pids) / total for i in range(len(SHAPES))]


def test_secagg_sum_equals_weighted_fedavg_within_quantization():
    max_weight = float(max(SIZES))
    (outcome,) = _simulate(_client_app(), secagg={"num_shares": 3, "reconstruction_threshold": 2},
                           max_weight=max_weight)
    assert outcome.weights is not None, outcome.halted_stage
    expected = _weighted_mean(range(5))
    # Each site quantises (n_i / max_weight) * w_i on 2^22 levels over [-8, 8]; the sum is divided by
    # sum(n_i / max_weight). The error is at most one level per site, scaled by that division.
    level = 2 * 8.0 / 2**22
    tol = len(SIZES) * level / (sum(SIZES) / max_weight)
    for got, want in zip(outcome.weights, expected, strict=True):
        assert np.max(np.abs(got - want)) <= tol
    # and it is really the weighted mean, not the plain one
    plain = [sum(_site_update(p)[i] for p in range(5)) / 5 for i in range(len(SHAPES))]
    assert np.max(np.abs(outcome.weights[0] - plain[0])) > 100 * tol
    assert sorted(m["site"] for _, m in outcome.log.results) == [f"s{i}" for i in range(5)]


def test_plain_fedavg_path_gives_the_same_aggregate():
    (outcome,) = _simulate(_client_app(secagg=False), secagg=None, max_weight=None)
    for got, want in zip(outcome.weights, _weighted_mean(range(5)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_too_many_dropouts_halt_secagg_and_are_reported():
    (outcome,) = _simulate(_client_app(failing=frozenset({0, 1, 2})),
                           secagg={"num_shares": 5, "reconstruction_threshold": 3}, max_weight=300.0)
    assert outcome.weights is None
    assert outcome.halted_stage == "collect masked vectors"
    assert sum("crashed" in f.text and not f.refused for f in outcome.log.failures) == 3


def test_an_even_share_count_halts_flower_which_is_why_config_refuses_it():
    # Bypass fedhaven's config check to show the trap it guards: Flower itself only logs and halts.
    even = CheckedSecAggPlus(num_shares=4, reconstruction_threshold=2, max_weight=300.0, timeout=60)
    (outcome,) = _simulate(_client_app(), secagg={"num_shares": 5, "reconstruction_threshold": 3},
                           max_weight=300.0, workflow=even)
    assert outcome.weights is None and outcome.halted_stage is not None
