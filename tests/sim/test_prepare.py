"""fl-sim prepares every site's and the test set's front end before round 1, in parallel, each once."""

from __future__ import annotations

from fedhaven.shared.features import features_cached
from fedhaven.shared.sources import load_data
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.prepare import prepare_sites
from fedhaven.sim.sites import SimulatedSites


def test_every_front_end_is_ready_before_round_one_and_built_once(tmp_path):
    exp = load_experiment(source="digits", overrides=["model.name=scatternet", f"output_dir={tmp_path}"])
    sites = SimulatedSites(exp)
    test = load_data(cfg=exp.data, split="test", cache_dir=exp.cache_dir())
    assert not any(features_cached(model_cfg=exp.model, data=sites.site_data(i), cache_dir=exp.cache_dir())
                   for i in range(exp.sites))
    assert prepare_sites(exp, workers=2) > 0
    assert all(features_cached(model_cfg=exp.model, data=sites.site_data(i), cache_dir=exp.cache_dir())
               for i in range(exp.sites))
    assert features_cached(model_cfg=exp.model, data=test, cache_dir=exp.cache_dir())
    stamps = sorted(p.stat().st_mtime_ns for p in exp.cache_dir().glob("*.rows"))
    assert len(stamps) == exp.sites + 1
    assert prepare_sites(exp, workers=2) == 0.0  # nothing left to do
    assert sorted(p.stat().st_mtime_ns for p in exp.cache_dir().glob("*.rows")) == stamps


def test_a_model_without_a_front_end_needs_nothing(tmp_path):
    exp = load_experiment(source="digits", overrides=[f"output_dir={tmp_path}"])  # LeNet
    assert prepare_sites(exp) == 0.0
    assert not list(exp.cache_dir().glob("*.rows"))
