"""fl-sim end to end on Flower's simulation engine: digits, 3 sites, 2 rounds, DP + SecAgg+."""

from __future__ import annotations

import json

import pytest
import torch

from fedhaven.shared.accounting import PrivacyStep, epsilon
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import ModelConfig
from fedhaven.sim import cli
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.runner import run_experiment

# Measured: over 24 runs the loss fell by at least 0.17 in round 1 and 0.71 in round 2.
TINY = ["rounds=2", "train.local_epochs=3", "train.lr=0.2", "train.batch_size=64", "dp.target_epsilon=8.0"]


@pytest.mark.slow
def test_digits_three_sites_two_rounds(tmp_path):
    exp = load_experiment(source="digits", overrides=TINY)
    assert (exp.sites, exp.rounds, exp.dp.enabled, exp.secagg.enabled) == (3, 2, True, True)
    seen = []
    summary = run_experiment(exp=exp, run_dir=tmp_path, on_round=seen.append)

    assert [r.round for r in seen] == [0, 1, 2] and all(r.status in ("initial", "ok") for r in seen)
    losses = [r.loss for r in seen]
    assert losses[2] < losses[1] < losses[0], losses  # the model improves every round
    assert seen[2].accuracy > seen[0].accuracy
    eps = [r.epsilon_max for r in seen[1:]]
    assert 0 < eps[0] < eps[1] <= 8.0  # privacy spent accumulates, within the target
    assert all(r.sites_ok == 3 and r.secure_aggregation for r in seen[1:])

    for name in ("config.json", "metrics.jsonl", "model.pt", "model.json", "accuracy.png", "epsilon.png",
                 "summary.json", "privacy.json", "privacy.md", "checkpoints/round-001.pt", "checkpoints/round-002.pt"):
        assert (tmp_path / name).exists(), name
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == summary.data
    assert data["final_accuracy"] == seen[2].accuracy and set(data["epsilon_per_site"]) == {
        "site-00", "site-01", "site-02"}
    # anyone can recompute each site's epsilon from the logged noise, sample rate and steps
    for site in data["privacy_per_site"].values():
        assert site["history_complete"] and len(site["history"]) == 2
        recomputed = epsilon(history=[PrivacyStep(*row) for row in site["history"]], delta=data["delta"],
                             accountant=data["accountant"])
        assert recomputed == pytest.approx(site["epsilon"], rel=1e-9)
    # every simulated site kept a verified ledger whose last entry is the epsilon reported
    from fedhaven.client.ledger import Ledger

    for name, site in data["privacy_per_site"].items():
        ledger = Ledger.in_dir(tmp_path / "sites" / name)
        assert ledger.verify().ok and [e.kind for e in ledger.entries()] == ["init", "update", "update"]
        assert ledger.entries()[-1].epsilon_after == pytest.approx(site["epsilon"])
    model = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 10))
    model.load_state_dict(torch.load(tmp_path / "model.pt"))


def test_check_prints_config_and_warns_when_protections_are_off(capfd):
    assert cli.main(["check", "digits", "--no-dp", "--no-secagg", "--rounds", "4"]) == 0
    out, err = capfd.readouterr()
    text = out + err
    assert "differential privacy is OFF" in text and "secure aggregation is OFF" in text
    assert "rounds = 4" in text and "check passed: nothing was trained" in text


def test_bad_experiment_lists_every_problem(capfd):
    assert cli.main(["check", "digits", "train.lr=-2", "sites=zero", "secagg.num_shares=4"]) == 2
    err = capfd.readouterr().err
    assert "4 problem(s)" in err and "train.lr" in err and "sites" in err and "Use 5 or 3" in err
    assert "must be more than half of num_shares (4), got 2" in err  # digits' threshold 2 is too low for 4 shares


def test_unknown_experiment_names_the_bundled_ones(capfd):
    assert cli.main(["check", "cifar-1000"]) == 2
    assert "digits" in capfd.readouterr().err
