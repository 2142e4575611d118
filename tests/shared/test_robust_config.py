"""[robust] and Flower's robust strategies at config/check time: what cannot work is refused with the fix."""

from __future__ import annotations

import pytest

from fedhaven.shared.config import ConfigError, parse
from fedhaven.shared.schema import ExperimentConfig, RunConfig, auto_update_norm


def _problems(data: dict, cls=RunConfig) -> str:
    with pytest.raises(ConfigError) as err:
        parse(cls, data)
    return str(err.value)


@pytest.mark.parametrize("name, f, need", [("krum", 1, 5), ("multikrum", 2, 7), ("bulyan", 1, 7), ("bulyan", 2, 11),
                                           ("fedmedian", 2, 5), ("trimmedavg", 1, 3)])
def test_each_robust_rule_needs_enough_sites_per_round(name, f, need):
    ok = {"secagg": {"enabled": False}, "strategy": {"name": name, "malicious_sites": f, "trim_fraction": 0.4}}
    parse(RunConfig, {**ok, "min_sites": need})
    text = _problems({**ok, "min_sites": need - 1})
    assert "needs at least" in text and f"= {need} sites per round, but min_sites is {need - 1}" in text
    assert f"raise min_sites to {need} or lower strategy.malicious_sites" in text


def test_trimmed_mean_that_trims_fewer_than_the_attackers_and_multikrum_keeping_too_many_are_refused():
    plain = {"secagg": {"enabled": False}, "min_sites": 10}
    text = _problems({**plain, "strategy": {"name": "trimmedavg", "malicious_sites": 2, "trim_fraction": 0.1}})
    assert "trim_fraction: 0.1 of 10 sites cuts 1 from each end, fewer than the 2 malicious site(s)" in text
    text = _problems({**plain, "strategy": {"name": "multikrum", "malicious_sites": 2, "keep": 9}})
    assert "multikrum averages 9 updates, more than the 8 honest ones" in text


@pytest.mark.parametrize("name", ["fedmedian", "trimmedavg", "krum", "multikrum", "bulyan"])
def test_a_robust_rule_under_secagg_is_refused_with_the_reason_and_the_fix(name):
    text = _problems({"min_sites": 11, "strategy": {"name": name}})  # SecAgg+ is on by default
    assert f"{name} inspects every site's update, but under SecAgg+ the coordinator sees only their sum" in text
    assert "would silently do nothing" in text and "--no-secagg" in text and "[robust]" in text
    text = _problems({"min_sites": 11, "secagg": {"enabled": False}, "strategy": {"name": name},
                      "central_dp": {"enabled": True}})
    assert f"not to {name}; use fedavg or fedprox" in text


def test_robust_defaults_and_checks():
    run = parse(RunConfig, {})
    assert run.robust.enabled and run.robust.max_update_norm == "auto" and run.robust.rotate
    assert auto_update_norm(44426) == pytest.approx(0.1 * 44426 ** 0.5)
    for bad, why in (({"max_update_norm": 0.0}, "max_update_norm: must be > 0"),
                     ({"coordinate_clip": 0.5}, "coordinate_clip: must be >= 1"),
                     ({"loss_factor": 1.0}, "loss_factor: must be > 1"), ({"max_rejected": 0}, "max_rejected")):
        assert why in _problems({"robust": bad})
    assert "site_policy.max_update_norm: must be > 0" in _problems({"site_policy": {"max_update_norm": -1.0}},
                                                                   ExperimentConfig)
    assert "attack.sites: site index 12 does not exist (10 sites: 0..9)" in _problems(
        {"attack": {"kind": "signflip", "sites": [0, 12]}}, ExperimentConfig)


def test_fl_sim_check_refuses_krum_under_secagg_and_accepts_it_without(capfd):
    from fedhaven.sim import cli

    assert cli.main(["check", "digits", "strategy.name=krum", "min_sites=3", "strategy.malicious_sites=0"]) == 2
    assert "krum inspects every site's update" in capfd.readouterr().err
    assert cli.main(["check", "digits", "strategy.name=krum", "strategy.malicious_sites=0", "min_sites=3",
                     "--no-secagg"]) == 0
