"""The hyperparameter rule: its values, its bounds, and how fl-sim and a coordinator treat `train.recipe = "auto"`."""

from __future__ import annotations

import pytest

from fedhaven.shared.config import ConfigError, parse
from fedhaven.shared.recipe import RULE_KEYS, main, recipe
from fedhaven.shared.schema import RunConfig


def test_the_rule_for_the_default_experiment():
    r = recipe(epsilon=3.0, site_size=6000, sites=10)
    assert (r.rounds, r.batch_size, r.lr, r.momentum, r.local_epochs) == (40, 1000, 1.0, 0.9, 1.0)
    assert set(r.as_settings()) == set(RULE_KEYS)


def test_more_budget_or_more_sites_train_longer_within_bounds():
    rounds = [recipe(epsilon=e, site_size=6000, sites=10).rounds for e in (0.1, 1.0, 3.0, 8.0, 50.0)]
    assert rounds == sorted(rounds) and rounds[0] == 10 and rounds[-1] == 40
    assert recipe(epsilon=1.0, site_size=6000, sites=20).rounds > recipe(epsilon=1.0, site_size=6000, sites=10).rounds


@pytest.mark.parametrize(("size", "batch"), [(6000, 1000), (100_000, 1024), (450, 75), (60, 16), (10, 10)])
def test_batch_is_a_sixth_of_the_site_within_bounds(size, batch):
    assert recipe(epsilon=3.0, site_size=size, sites=10).batch_size == batch


def test_nonsense_is_refused():
    for kw in ({"epsilon": 0.0, "site_size": 10, "sites": 1}, {"epsilon": 1.0, "site_size": 0, "sites": 1}):
        with pytest.raises(ValueError, match="the rule needs"):
            recipe(**kw)


def test_command_line_prints_the_settings(capsys):
    assert main(["--epsilon", "3", "--site-size", "6000", "--sites", "10"]) == 0
    out = capsys.readouterr().out
    assert "rounds = 40" in out and "train.batch_size = 1000" in out


def test_a_coordinator_refuses_auto_with_the_fix():
    with pytest.raises(ConfigError, match="python -m fedhaven.shared.recipe"):
        parse(RunConfig, {"train": {"recipe": "auto"}}, source="run.toml")
    assert parse(RunConfig, {"train": {"recipe": "manual"}}, source="run.toml").train.recipe == "manual"
