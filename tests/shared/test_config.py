"""Configuration parsing: types, ranges, unknown keys, every problem listed at once, overrides."""

from __future__ import annotations

import pytest

from fedhaven.shared.config import ConfigError, deep_merge, flatten, parse, parse_override, to_dict, unflatten
from fedhaven.shared.schema import DPConfig, ExperimentConfig, RunConfig, SecAggConfig


def test_defaults_are_valid_and_secure():
    run = parse(RunConfig, {})
    assert run.dp.enabled and run.secagg.enabled
    assert run.dp.delta == 1e-5 and run.dp.noise_multiplier == "auto"


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        parse(ExperimentConfig, {"sites": "ten", "rounds": 0, "colour": "blue",
                                 "train": {"lr": -1, "batch": 3}, "dp": {"delta": 2.0}})
    problems = err.value.problems
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert "sites: expected int, got 'ten'" in text
    assert "rounds: must be >= 1" in text
    assert "colour: unknown setting" in text and "valid here:" in text
    assert "train.lr: must be > 0" in text
    assert "train.batch: unknown setting" in text
    assert "dp.delta: must be < 1" in text


def test_bool_is_not_an_int_and_int_is_a_float():
    with pytest.raises(ConfigError, match="rounds: expected int, got True"):
        parse(RunConfig, {"rounds": True})
    assert parse(RunConfig, {"train": {"lr": 1}}).train.lr == 1.0


def test_literal_and_union_values():
    assert parse(DPConfig, {"noise_multiplier": 1.1}).noise_multiplier == 1.1
    assert parse(DPConfig, {"noise_multiplier": "auto"}).noise_multiplier == "auto"
    with pytest.raises(ConfigError, match="noise_multiplier: expected float or 'auto'"):
        parse(DPConfig, {"noise_multiplier": "high"})
    with pytest.raises(ConfigError, match="accountant: expected 'rdp' or 'prv'"):
        parse(DPConfig, {"accountant": "gdp"})


def test_even_num_shares_is_rejected_with_the_fix():
    with pytest.raises(ConfigError) as err:
        parse(SecAggConfig, {"num_shares": 4})
    assert "even" in str(err.value) and "Use 5 or 3" in str(err.value)
    assert parse(SecAggConfig, {"num_shares": 5}).num_shares == 5
    assert parse(SecAggConfig, {"num_shares": 0.5}).num_shares == 0.5


def test_secagg_threshold_must_fit_the_sites():
    with pytest.raises(ConfigError, match="min_sites: SecAgg\\+ needs at least 3"):
        parse(RunConfig, {"min_sites": 2, "secagg": {"reconstruction_threshold": 3}})
    with pytest.raises(ConfigError, match="reconstruction_threshold: must be less than num_shares"):
        parse(SecAggConfig, {"num_shares": 3, "reconstruction_threshold": 3})


def test_partition_spec_is_validated():
    assert parse(ExperimentConfig, {"partition": "dirichlet:0.3"}).partition_alpha() == 0.3
    assert parse(ExperimentConfig, {"partition": "iid"}).partition_alpha() is None
    with pytest.raises(ConfigError, match="partition: expected 'iid', 'folders' or 'dirichlet:ALPHA'"):
        parse(ExperimentConfig, {"partition": "dirichlet"})
    with pytest.raises(ConfigError, match="'folders'.*imagefolder"):
        parse(ExperimentConfig, {"partition": "folders"})


def test_overrides_are_typed_by_toml_and_merge_deeply():
    merged = deep_merge({"train": {"lr": 0.1, "momentum": 0.9}}, parse_override("train.lr=0.5"))
    assert merged == {"train": {"lr": 0.5, "momentum": 0.9}}
    assert parse_override("name=my-run") == {"name": "my-run"}
    assert parse_override("dp.enabled=false") == {"dp": {"enabled": False}}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("train.lr")


def test_roundtrip_through_flat_dicts():
    exp = parse(ExperimentConfig, {"sites": 4, "min_sites": 3, "train": {"lr": 0.25}})
    flat = flatten(to_dict(exp))
    assert flat["train.lr"] == 0.25
    assert parse(ExperimentConfig, unflatten(flat)) == exp
    assert exp.run_config() == parse(RunConfig, {k: v for k, v in to_dict(exp).items()
                                                 if k not in ("name", "sites", "partition", "simulation", "site_policy",
                                                                     "attack")})


def test_zero_noise_is_refused_unless_the_experiment_says_it_is_not_private():
    """`dp.noise_multiplier = 0.0` used to run and report epsilon 0.0: now it names the three ways out."""
    with pytest.raises(ConfigError) as err:
        parse(RunConfig, {"dp": {"noise_multiplier": 0.0}, "central_dp": {"enabled": True, "noise_multiplier": 0.0}})
    text = str(err.value)
    assert "dp.noise_multiplier: 0 adds no noise" in text and "dp.allow_not_private = true" in text
    assert "--no-dp" in text and "central_dp.allow_not_private = true" in text
    run = parse(RunConfig, {"dp": {"noise_multiplier": 0.0, "allow_not_private": True}})
    assert run.dp.not_private
    assert not parse(RunConfig, {"dp": {"enabled": False, "noise_multiplier": 0.0}}).dp.not_private


def test_auto_clipped_count_noise_always_passes_flowers_adaptive_check():
    """Flower refuses noise >= 2 * count stddev in round 1; "auto" is valid by construction."""
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    from fedhaven.shared.schema import CentralDPConfig

    for z in (0.01, 0.5, 1.0, 3.0, 20.0):
        for sites in (1, 2, 3, 10, 100, 5000):
            c = parse(CentralDPConfig, {"enabled": True, "clipping": "adaptive", "noise_multiplier": z})
            count, value = compute_adaptive_noise_params(z, sites, c.count_stddev(sites=sites))
            assert count == c.count_stddev(sites=sites) and value >= z
            assert value <= z / (0.75 ** 0.5) + 1e-12  # the update's noise grows by at most ~15%
    with pytest.raises(ConfigError, match="must exceed noise_multiplier / 2"):
        parse(CentralDPConfig, {"enabled": True, "clipping": "adaptive", "noise_multiplier": 1.0,
                                "clipped_count_stddev": 0.15})
