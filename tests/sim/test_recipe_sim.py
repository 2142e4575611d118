"""fl-sim resolves `train.recipe = "auto"`: the rule fills what the experiment leaves out, explicit settings win."""

from __future__ import annotations

from fedhaven.shared.recipe import recipe
from fedhaven.sim import cli
from fedhaven.sim.experiment import load_experiment

AUTO = ["train.recipe=auto"]


def _bare(tmp_path, extra: str = "") -> str:
    path = tmp_path / "exp.toml"
    path.write_text(f'name = "bare"\nsites = 3\nmin_sites = 3\n[data]\nsource = "digits"\n[train]\nrecipe = "auto"\n'
                    f'{extra}[secagg]\nnum_shares = 3\nreconstruction_threshold = 2\n')
    return str(path)


def test_the_rule_fills_every_key_the_experiment_leaves_out(tmp_path):
    exp = load_experiment(source=_bare(tmp_path), overrides=["dp.target_epsilon=1"])
    want = recipe(epsilon=1.0, site_size=449, sites=3)  # digits: 1,348 training images over 3 sites
    assert (exp.rounds, exp.train.batch_size, exp.train.lr, exp.train.momentum, exp.train.local_epochs) == (
        want.rounds, want.batch_size, want.lr, want.momentum, want.local_epochs)


def test_explicit_settings_win_over_the_rule(tmp_path):
    exp = load_experiment(source=_bare(tmp_path, "lr = 0.25\n"), overrides=["train.momentum=0.5"], flags={"rounds": 4})
    want = recipe(epsilon=exp.dp.target_epsilon, site_size=449, sites=3)
    assert (exp.rounds, exp.train.lr, exp.train.momentum) == (4, 0.25, 0.5)
    assert exp.train.batch_size == want.batch_size and exp.train.local_epochs == want.local_epochs


def test_manual_leaves_everything_as_written():
    exp = load_experiment(source="digits")
    assert exp.train.recipe == "manual" and exp.rounds == 5 and exp.train.batch_size == 64


def test_check_prints_the_resolved_values(tmp_path, capfd):
    assert cli.main(["check", _bare(tmp_path), "dp.target_epsilon=3"]) == 0
    out, err = capfd.readouterr()
    want = recipe(epsilon=3.0, site_size=449, sites=3)
    assert f"rounds = {want.rounds}" in out + err and f"batch_size = {want.batch_size}" in out + err
