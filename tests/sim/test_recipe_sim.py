"""fl-sim resolves `train.recipe = "auto"`: the rule fills what the experiment leaves out, explicit settings win,
and each simulated site derives its own batch from its own size, as a deployed site does."""

from __future__ import annotations

from fedhaven.shared.recipe import expected_batch, recipe
from fedhaven.sim import cli
from fedhaven.sim.experiment import load_experiment

AUTO = ["train.recipe=auto"]


def _bare(tmp_path, extra: str = "") -> str:
    path = tmp_path / "exp.toml"
    path.write_text(f'name = "bare"\nsites = 3\nmin_sites = 3\n[data]\nsource = "digits"\n[model]\nname = "lenet"\n'
                    f'[train]\nrecipe = "auto"\n{extra}[secagg]\nnum_shares = 3\nreconstruction_threshold = 2\n')
    return str(path)


def test_the_rule_fills_every_key_the_experiment_leaves_out(tmp_path):
    exp = load_experiment(source=_bare(tmp_path), overrides=["dp.target_epsilon=1"])
    want = recipe(epsilon=1.0, sites=3)
    assert (exp.rounds, exp.train.lr, exp.train.momentum, exp.train.local_epochs) == (
        want.rounds, want.lr, want.momentum, want.local_epochs)
    assert exp.train.batch_size == "auto"  # each site's own


def test_explicit_settings_win_over_the_rule(tmp_path):
    exp = load_experiment(source=_bare(tmp_path, "lr = 0.25\n"), overrides=["train.momentum=0.5"], flags={"rounds": 4})
    want = recipe(epsilon=exp.dp.target_epsilon, sites=3)
    assert (exp.rounds, exp.train.lr, exp.train.momentum) == (4, 0.25, 0.5)
    assert exp.train.batch_size == "auto" and exp.train.local_epochs == want.local_epochs
    assert load_experiment(source=_bare(tmp_path, "batch_size = 32\n")).train.batch_size == 32


def test_manual_leaves_everything_as_written():
    exp = load_experiment(source="digits")
    assert exp.train.recipe == "manual" and exp.rounds == 5 and exp.train.batch_size == 64


def test_check_prints_the_resolved_values(tmp_path, capfd):
    assert cli.main(["check", _bare(tmp_path), "dp.target_epsilon=3"]) == 0
    out, err = capfd.readouterr()
    want = recipe(epsilon=3.0, sites=3)
    assert f"rounds = {want.rounds}" in out + err and 'batch_size = "auto"' in out + err


def test_each_simulated_site_trains_with_its_own_sizes_batch(tmp_path):
    """Under a Dirichlet split sites differ in size: each one's sample rate is the rule's batch over its size."""
    import json

    run_dir = tmp_path / "run"
    assert cli.main(["run", _bare(tmp_path), "--rounds", "1", "--partition", "dirichlet:0.5", "--no-secagg",
                     "--run-dir", str(run_dir), f"output_dir={tmp_path}", "min_sites=3"]) == 0
    from fedhaven.sim.sites import SimulatedSites

    exp = load_experiment(source=_bare(tmp_path), overrides=["partition=dirichlet:0.5", f"output_dir={tmp_path}"],
                          flags={"secagg": {"enabled": False}})
    sizes = dict(zip((SimulatedSites(exp).site_info(i).name for i in range(3)), SimulatedSites(exp).sizes(),
                     strict=True))
    assert len(set(sizes.values())) > 1
    rates = {name: rec["sample_rate"] for name, rec in json.loads((run_dir / "summary.json").read_text())
             ["privacy_per_site"].items()}
    for name, size in sizes.items():
        assert abs(rates[name] - min(1.0, expected_batch(site_size=size) / size)) < 1e-12, (name, size, rates)
