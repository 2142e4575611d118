"""Property-based: over accountants, noise, sample rates, steps, rounds, retries and several runs on one site,
every epsilon reported is at least what a fresh Opacus accountant computes from the ledger, and no site ever
passes the run's target or its own budget. Bounded (`max_examples`) so they run in seconds, not minutes."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import create_accountant

from fedhaven.client.ledger import Ledger
from fedhaven.client.policy import BudgetRefused, budget_spent, plan_round, refusal_code, task_violations
from fedhaven.server.privacy_report import build_privacy_report
from fedhaven.server.records import SiteReport
from fedhaven.shared.accounting import epsilon
from fedhaven.shared.refusal import Code
from fedhaven.shared.schema import SIMULATION_POLICY, DPConfig, InputSpec, ModelConfig, RunConfig, TrainConfig
from fedhaven.shared.task import TaskSpec

BOUNDED = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: A few site sizes and batches: sample rates from 0.03 to 1 (small sets keep the accountant's cache warm).
SIZES = st.sampled_from([(40, 64), (240, 32), (1000, 128), (5000, 150)])


def fresh_epsilon(ledger: Ledger, *, delta: float, accountant: str) -> float:
    """A fresh Opacus accountant over the ledger's updates since its last init/reset, unmerged, as written."""
    updates = []
    for e in ledger.entries():
        if e.starts_budget:
            updates = []
        elif e.kind == "update":
            updates.append((e.noise_multiplier, e.sample_rate, e.steps))
    if not updates:
        return 0.0
    if any(z == 0 for z, _, _ in updates):
        return math.inf
    acc = create_accountant(accountant)
    acc.history = updates
    return float(acc.get_epsilon(delta=delta))


run_settings = st.fixed_dictionaries({
    "target": st.sampled_from([1.0, 3.0, 8.0]),
    "noise": st.sampled_from(["auto", "auto", 0.7, 1.0, 2.0]),
    "delta": st.sampled_from([1e-5, 1e-6]),
    "planned": st.integers(1, 3),
    "attempts": st.lists(st.integers(1, 2), min_size=1, max_size=3),  # per round: 2 = the round was retried
    "epochs": st.sampled_from([0.5, 1.0]),
})


@BOUNDED
@given(accountant=st.sampled_from(["rdp", "rdp", "prv"]), size=SIZES,
       max_epsilon=st.sampled_from([math.inf, 2.0, 5.0, 12.0]), min_noise=st.sampled_from([0.0, 0.5, 1.0]),
       runs=st.lists(run_settings, min_size=1, max_size=2))
def test_no_site_passes_a_limit_and_every_epsilon_is_at_least_the_fresh_accountants(
        accountant, size, max_epsilon, min_noise, runs):
    num_examples, batch = size
    policy = replace(SIMULATION_POLICY, max_epsilon=max_epsilon, min_noise_multiplier=min_noise, delta=1e-5,
                     accountant=accountant)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.in_dir(Path(tmp) / "state")
        ledger.init(site="s")
        for run_id, r in enumerate(runs, start=1):
            if accountant == "prv" and r["noise"] == "auto":
                r = {**r, "noise": 1.0}  # PRV's noise search takes seconds per round: fixed noise keeps it bounded
            dp = DPConfig(target_epsilon=r["target"], noise_multiplier=r["noise"], delta=r["delta"],
                          accountant=accountant)
            last = None
            for rnd, attempts in enumerate(r["attempts"][: r["planned"]], start=1):
                task = TaskSpec(server_round=rnd, planned_rounds=r["planned"], input=InputSpec(1, 8, 3),
                                classes=("a", "b", "c"), model=ModelConfig(name="lenet"),
                                train=TrainConfig(batch_size=batch, local_epochs=r["epochs"]), dp=dp)
                for _ in range(attempts):
                    history = ledger.history()
                    why = task_violations(task=task, policy=policy, secure_aggregation=True, history=history)
                    try:
                        if why:
                            raise BudgetRefused(refusal_code(why), "; ".join(v.reason for v in why))
                        plan = plan_round(task=task, policy=policy, history=history, num_examples=num_examples)
                    except BudgetRefused as exc:
                        assert exc.code in (Code.RUN_TARGET, Code.SITE_BUDGET, Code.POLICY), str(exc)
                        assert (exc.code != Code.POLICY) or "below this site's minimum" in str(exc)
                        continue
                    after = history.add(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                                        steps=plan.steps)
                    eps = epsilon(history=after, delta=dp.delta, accountant=accountant)  # what the site reports
                    ledger.append(site="s", run_id=run_id, server_round=rnd, model="lenet", update_sha256="0" * 64,
                                  weights_sha256="0" * 64, update_l2_norm=1.0, num_examples=num_examples,
                                  noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                                  steps=plan.steps, delta=dp.delta, accountant=accountant, epsilon_before=None,
                                  epsilon_after=eps, cumulative_epsilon=budget_spent(policy=policy, history=after))
                    fresh = fresh_epsilon(ledger, delta=dp.delta, accountant=accountant)
                    assert eps >= fresh * (1 - 1e-9)  # the reported epsilon never understates
                    assert eps <= dp.target_epsilon * (1 + 1e-9)  # the run's target holds, retries included
                    site_total = fresh_epsilon(ledger, delta=policy.delta, accountant=accountant)
                    assert site_total <= max_epsilon * (1 + 1e-9)  # and so does the site's own budget
                    last = SiteReport(site="s", num_examples=num_examples, loss=0.0, accuracy=0.0, epsilon=eps,
                                      delta=dp.delta, noise_multiplier=plan.noise_multiplier,
                                      sample_rate=plan.sample_rate, steps=plan.steps, total_steps=0)
            if last is not None:  # the coordinator's report of this run states at least the ledger's epsilon
                report = build_privacy_report(run=RunConfig(dp=dp), sites={"s": last}, rounds=[], max_weight=None)
                stated = report.data["sites"]["s"]["epsilon"]
                assert stated >= fresh_epsilon(ledger, delta=dp.delta, accountant=accountant) * (1 - 1e-9)
                assert report.data["epsilon_max"] == stated
        assert ledger.verify().ok


@BOUNDED
@given(entries=st.lists(st.tuples(st.floats(0.3, 5.0), st.floats(0.001, 1.0), st.integers(1, 2000)),
                        min_size=1, max_size=5),
       delta=st.sampled_from([1e-5, 1e-6, 1e-8]))
def test_the_rdp_epsilon_is_the_fresh_accountants_bit_for_bit(entries, delta):
    from fedhaven.shared.accounting import PrivacyStep

    acc = create_accountant("rdp")
    for z, q, n in entries:  # what RDPAccountant.step does n times: a repeat of the last (noise, rate) adds steps
        if acc.history and acc.history[-1][:2] == (z, q):
            acc.history[-1] = (z, q, acc.history[-1][2] + n)
        else:
            acc.history.append((z, q, n))
    assert epsilon(history=[PrivacyStep(*e) for e in entries], delta=delta) == acc.get_epsilon(delta=delta)


@BOUNDED
@given(clipping=st.sampled_from(["fixed", "adaptive"]), z=st.floats(0.3, 3.0), rounds=st.integers(1, 5),
       m=st.integers(2, 8), extra=st.integers(0, 20))
def test_central_epsilon_is_at_least_a_fresh_accountant_at_the_configured_noise(clipping, z, rounds, m, extra):
    """Whatever the clipping, the accountant uses the configured multiplier (never adaptive's larger share)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.server.strategy import FedAvg
    from flwr.supercore.differential_privacy import KEY_NORM_BIT

    from fedhaven.server.flower_legacy import build_strategy
    from fedhaven.server.privacy_report import central_history
    from fedhaven.server.records import RoundRecord
    from fedhaven.shared.config import parse

    run = parse(RunConfig, {"min_sites": m, "secagg": {"enabled": False}, "robust": {"enabled": False},
                            "central_dp": {"enabled": True, "clipping": clipping, "noise_multiplier": z}})
    wrapper = build_strategy(run=run, initial=[np.zeros(4, dtype=np.float32)], fit_config=lambda r: {}).inner
    assert isinstance(wrapper.strategy.inner, FedAvg)  # behind the [robust] guard, off here: updates are weights
    res = [(None, FitRes(status=Status(Code.OK, ""), num_examples=1, metrics={KEY_NORM_BIT: i % 2 == 0},
                         parameters=ndarrays_to_parameters([np.full(4, 0.1 * i, dtype=np.float32)])))
           for i in range(m)]
    records = []
    for rnd in range(1, rounds + 1):
        wrapper.aggregate_fit(rnd, res, [])
        records.append(RoundRecord(round=rnd, status="ok", attempt=1, loss=0.0, accuracy=0.0, epsilon_max=None,
                                   epsilon_mean=None, sites_ok=m, sites_failed=0, round_time_s=0, fit_time_s=0,
                                   eval_time_s=0, secure_aggregation=False, sites_available=m + extra))
    stated = build_privacy_report(run=run, sites={}, rounds=records, max_weight=None,
                                  central=wrapper.applied).data["central_dp"]["epsilon"]
    acc = create_accountant("rdp")
    acc.history = [(z, m / (m + extra), rounds)]
    assert central_history(noise=wrapper.applied, rounds=records).total_steps == rounds
    assert stated >= acc.get_epsilon(delta=run.central_dp.delta) * (1 - 1e-12)
