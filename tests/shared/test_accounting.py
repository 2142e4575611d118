"""Privacy accounting: accumulated history equals a fresh Opacus accountant; target-epsilon noise is right."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedhaven.shared.accounting import PrivacyHistory, PrivacyStep, epsilon, noise_for_budget


@pytest.mark.parametrize(("kind", "cls"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_after_k_rounds_equals_fresh_accountant(kind, cls):
    history = PrivacyHistory()
    fresh = cls()  # stepped one DP-SGD step at a time, the way Opacus does during training
    rounds = [(1.1, 0.05, 20), (1.1, 0.05, 20), (1.3, 0.04, 25)]  # a third round with another site size
    previous = 0.0
    for z, q, steps in rounds:
        history = history.add(noise_multiplier=z, sample_rate=q, steps=steps)
        for _ in range(steps):
            fresh.step(noise_multiplier=z, sample_rate=q)
        ours = epsilon(history=history, delta=1e-5, accountant=kind)
        assert ours == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-9)
        assert ours > previous  # epsilon only grows
        previous = ours


def test_history_survives_storage_and_merges_runs():
    h = PrivacyHistory().add(noise_multiplier=1.0, sample_rate=0.1, steps=10).add(
        noise_multiplier=1.0, sample_rate=0.1, steps=5).add(noise_multiplier=2.0, sample_rate=0.1, steps=1)
    assert h.as_opacus() == [(1.0, 0.1, 15), (2.0, 0.1, 1)]
    assert PrivacyHistory.from_columns(h.to_columns()) == h
    assert h.total_steps == 16
    with pytest.raises(ValueError):
        PrivacyHistory.from_columns({"noise_multiplier": [1.0], "sample_rate": [], "steps": [1]})


def test_edge_cases():
    assert epsilon(history=PrivacyHistory(), delta=1e-5) == 0.0
    assert epsilon(history=[PrivacyStep(0.0, 0.1, 3)], delta=1e-5) == math.inf
    with pytest.raises(ValueError):
        PrivacyStep(1.0, 0.0, 1)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_noise_for_budget_meets_the_target_tightly(kind):
    z = noise_for_budget(target_epsilon=3.0, delta=1e-5, sample_rate=0.085, steps=165, accountant=kind)
    at = epsilon(history=[PrivacyStep(z, 0.085, 165)], delta=1e-5, accountant=kind)
    assert at <= 3.0
    below = epsilon(history=[PrivacyStep(z - 0.01, 0.085, 165)], delta=1e-5, accountant=kind)
    assert below > 3.0  # a little less noise would break the target


def test_noise_for_budget_counts_what_was_spent_before():
    prior = PrivacyHistory().add(noise_multiplier=2.0, sample_rate=0.1, steps=50)  # epsilon ~1.8
    fresh = noise_for_budget(target_epsilon=4.0, delta=1e-5, sample_rate=0.1, steps=50)
    after = noise_for_budget(target_epsilon=4.0, delta=1e-5, sample_rate=0.1, steps=50, prior=prior)
    assert after > fresh
    total = epsilon(history=prior.add(noise_multiplier=after, sample_rate=0.1, steps=50), delta=1e-5)
    assert total <= 4.0
    spent = PrivacyHistory().add(noise_multiplier=0.5, sample_rate=0.5, steps=500)
    with pytest.raises(ValueError, match="already spent reaches the target 1 "):
        noise_for_budget(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=10, prior=spent)


def test_noise_for_budget_is_memoised_per_question():
    """Equal-sized simulated sites ask the same question; the accountant search runs once per process."""
    from fedhaven.shared import accounting

    ask = dict(target_epsilon=2.5, delta=1e-5, sample_rate=0.27, steps=60)
    first = noise_for_budget(**ask)
    hits = accounting._noise_for_budget.cache_info().hits
    assert noise_for_budget(**ask) == first
    assert accounting._noise_for_budget.cache_info().hits == hits + 1
    prior = PrivacyHistory().add(noise_multiplier=first, sample_rate=0.27, steps=10)
    assert noise_for_budget(**ask, prior=prior) > first  # a different history is a different question
