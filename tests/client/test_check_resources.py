"""`fl-client check` names the memory and disk training will need and refuses what cannot fit, before any run."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from fedhaven.client.cli import main


@pytest.fixture
def site_toml(tmp_path, digits_site):
    """`site_toml(extra="")`: a digits site with its ledger initialised; the path of its site.toml."""
    return lambda extra="": str(digits_site(tmp_path, extra=extra, ledger=True) / "site.toml")


def _check(capfd, cfg: str) -> tuple[int, str]:
    code = main(["check", "--config", cfg])
    out, err = capfd.readouterr()
    return code, out + err


def test_check_names_disk_and_memory_per_allowed_model(tmp_path, site_toml, capfd):
    code, text = _check(capfd, site_toml())
    assert code == 0, text
    assert "scatternet" in text and "lenet" in text
    assert "120 images of 1x8x8" in text and "front-end features" in text
    assert "limit 2048 MB" in text and "examples per pass" in text
    assert list((tmp_path / "state" / "feature-cache").glob("*.rows"))  # the check decoded the images once


def test_a_limit_that_holds_no_training_step_is_refused_with_the_fix(tmp_path, site_toml, capfd):
    code, text = _check(capfd, site_toml("memory_mb = 256"))
    assert code == 2 and "memory_mb: 256 MB leaves no room for one training example" in text
    assert "raise it to at least" in text


def test_a_limit_beyond_the_machine_is_refused(tmp_path, site_toml, capfd):
    code, text = _check(capfd, site_toml("memory_mb = 100000000"))
    assert code == 2 and "memory: memory_mb = 100000000 needs about" in text and "available" in text


def test_too_little_disk_for_the_features_is_refused(tmp_path, site_toml, capfd, monkeypatch):
    cfg = site_toml()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 1000, 1000))
    code, text = _check(capfd, cfg)
    assert code == 2 and "front-end features needs" in text and "feature-cache" in text and "are free" in text


@pytest.mark.parametrize("models", ['["lenet"]', '["scatternet"]'])
def test_only_allowed_models_are_sized(tmp_path, site_toml, capfd, models):
    cfg = site_toml()
    text = (tmp_path / "site.toml").read_text().replace("max_epsilon = 50.0", f"max_epsilon = 50.0\nallowed_models = "
                                                                              f"{models}")
    (tmp_path / "site.toml").write_text(text)
    code, out = _check(capfd, cfg)
    other = "lenet" if "scatternet" in models else "scatternet"
    assert code == 0 and f"\n{other} " not in out


def test_start_prepares_the_front_end_before_joining(tmp_path, site_toml):
    from fedhaven.client.cli.check import check_site
    from fedhaven.client.cli.start import prepare
    from fedhaven.client.deployment import site_info
    from fedhaven.client.site_config import load_site_config
    from fedhaven.shared.features import features_cached
    from fedhaven.shared.schema import ModelConfig

    cfg = load_site_config(site_toml())
    data, _ = check_site(cfg)
    assert not features_cached(model_cfg=ModelConfig(), data=data, cache_dir=site_info(cfg).cache())
    prepare(cfg, data)
    assert features_cached(model_cfg=ModelConfig(), data=data, cache_dir=site_info(cfg).cache())
