"""The hyperparameter rule: its values, its bounds, and how fl-sim and a coordinator resolve `train.recipe = "auto"`."""

from __future__ import annotations

import pytest

from fedhaven.shared.config import parse
from fedhaven.shared.recipe import RULE_KEYS, apply_recipe, expected_batch, main, recipe
from fedhaven.shared.schema import RunConfig


def test_the_rule_for_the_default_experiment():
    r = recipe(epsilon=3.0, sites=10)
    assert (r.rounds, r.lr, r.momentum, r.local_epochs) == (40, 1.0, 0.9, 1.0)
    assert set(r.as_settings()) == set(RULE_KEYS)
    assert expected_batch(site_size=6000) == 1000


def test_more_budget_or_more_sites_train_longer_within_bounds():
    rounds = [recipe(epsilon=e, sites=10).rounds for e in (0.1, 1.0, 3.0, 8.0, 50.0)]
    assert rounds == sorted(rounds) and rounds[0] == 10 and rounds[-1] == 40
    assert recipe(epsilon=1.0, sites=20).rounds > recipe(epsilon=1.0, sites=10).rounds


@pytest.mark.parametrize(("size", "batch"), [(6000, 1000), (100_000, 1024), (450, 75), (60, 16), (10, 10)])
def test_batch_is_a_sixth_of_the_site_within_bounds(size, batch):
    assert expected_batch(site_size=size) == batch


def test_nonsense_is_refused():
    for kw in ({"epsilon": 0.0, "sites": 1}, {"epsilon": 1.0, "sites": 0}):
        with pytest.raises(ValueError, match="the rule needs"):
            recipe(**kw)
    with pytest.raises(ValueError, match="the rule needs"):
        expected_batch(site_size=0)


def test_command_line_prints_the_settings(capsys):
    assert main(["--epsilon", "3", "--sites", "10", "--site-size", "6000"]) == 0
    out = capsys.readouterr().out
    assert "rounds = 40" in out and "train.batch_size = 1000" in out


def test_a_coordinator_resolves_auto_and_leaves_the_batch_to_each_site():
    given = {"train": {"recipe": "auto", "lr": 0.3}, "dp": {"target_epsilon": 1.0}}
    run = apply_recipe(parse(RunConfig, given), given=given, sites=20)
    want = recipe(epsilon=1.0, sites=20)
    assert (run.rounds, run.train.momentum, run.train.local_epochs) == (want.rounds, want.momentum, want.local_epochs)
    assert run.train.lr == 0.3  # written: wins over the rule
    assert run.train.batch_size == "auto"
    fixed = {"train": {"recipe": "auto", "batch_size": 128}, "rounds": 7}
    run = apply_recipe(parse(RunConfig, fixed), given=fixed, sites=3)
    assert (run.rounds, run.train.batch_size) == (7, 128)
