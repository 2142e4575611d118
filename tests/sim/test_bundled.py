"""Every bundled experiment and deployment template survives one site dropping out of a round."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedhaven.server.cli.run import load_run_config
from fedhaven.sim.experiment import bundled_experiments, load_experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", bundled_experiments())
def test_a_bundled_experiment_tolerates_one_dropout(name):
    exp = load_experiment(source=name, overrides=[])
    assert exp.min_sites <= exp.sites - 1, f"{name}: min_sites {exp.min_sites} of {exp.sites} fails on one dropout"
    if exp.secagg.enabled:  # the sites left must still hold enough shares to unmask
        assert exp.sites - 1 >= exp.secagg.reconstruction_threshold


def test_the_compose_run_tolerates_one_dropout(tmp_path):
    compose = (ROOT / "deploy/compose/compose.yaml").read_text()
    sites = set(re.findall(r"^  (site-[a-z]+):", compose, flags=re.M))
    run = load_run_config(path=ROOT / "deploy/compose/run.toml", overrides=[], rounds=None, output_dir=tmp_path)
    assert len(sites) >= 2 and run.min_sites <= len(sites) - 1, (sites, run.min_sites)
    if run.secagg.enabled:
        assert len(sites) - 1 >= run.secagg.reconstruction_threshold
