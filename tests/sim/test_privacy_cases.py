"""The runs issue 10 quoted, end to end through `fl-sim` on Flower's simulation engine: each either reports an
epsilon at least a fresh accountant's, or is refused up front with the fix named and no traceback."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant

from fedhaven.client.ledger import Ledger
from fedhaven.sim import cli

pytestmark = pytest.mark.slow


def _fresh(z: float, q: float, steps: int) -> float:
    acc = RDPAccountant()
    acc.history = [(z, q, steps)]
    return acc.get_epsilon(delta=1e-5)


def test_adaptive_central_dp_is_accounted_at_the_configured_noise(tmp_path, capfd):
    """Was 7.59 where a fresh accountant for noise 1.0, rate 1, 3 rounds gives 9.01."""
    code = cli.main(["run", "digits", "central_dp.enabled=true", "central_dp.clipping=adaptive",
                     "central_dp.noise_multiplier=1.0", "central_dp.clipped_count_stddev=1.0", "--rounds", "3",
                     "--no-secagg", "--run-dir", str(tmp_path)])
    assert code == 0, capfd.readouterr().err
    central = json.loads((tmp_path / "privacy.json").read_text())["central_dp"]
    assert central["rounds"] == 3 and central["accounted_noise_multipliers"] == [1.0] * 3
    assert central["epsilon"] >= _fresh(1.0, 1.0, 3) * (1 - 1e-12)


def test_adaptive_central_dp_with_secagg_and_auto_count_noise_runs(tmp_path, capfd):
    """Was "norm_bit not returned by client" in round 1 (SecAgg+ on, the default), and with the default
    `clipped_count_stddev = "auto"` even without SecAgg+ Flower refused round 1 (0.15 too low)."""
    code = cli.main(["run", "digits", "central_dp.enabled=true", "central_dp.clipping=adaptive", "--rounds", "2",
                     "--run-dir", str(tmp_path)])
    out = capfd.readouterr()
    assert code == 0, out.err
    assert "Traceback" not in out.out + out.err
    report = json.loads((tmp_path / "privacy.json").read_text())
    central = report["central_dp"]
    assert report["secure_aggregation"]["enabled"] and central["rounds"] == 2
    assert central["count_noise_std"] == 1.0 and all(v > 1.0 for v in central["value_noise_multipliers"])
    assert central["epsilon"] >= _fresh(1.0, 1.0, 2) * (1 - 1e-12)


def test_zero_noise_is_refused_at_check_time_with_the_fix(capfd):
    assert cli.main(["check", "digits", "dp.noise_multiplier=0.0", "--rounds", "1"]) == 2
    err = capfd.readouterr().err
    assert "adds no noise" in err and "dp.allow_not_private = true" in err and "Traceback" not in err


def test_zero_noise_when_the_experiment_says_so_is_reported_as_not_private(tmp_path, capfd):
    """Was `"epsilon_max": 0.0` in privacy.json and a TypeError in the summary."""
    code = cli.main(["run", "digits", "dp.noise_multiplier=0.0", "dp.allow_not_private=true", "--rounds", "1",
                     "--run-dir", str(tmp_path)])
    out = capfd.readouterr()
    text = out.out + out.err
    assert code == 0, text
    assert "Traceback" not in text and "NOT PRIVATE" in text and "∞" in text
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["epsilon_max"] is None and report["private"] is False
    assert all(s["epsilon"] is None and not s["private"] for s in report["sites"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epsilon_max"] is None and summary["private"] is False
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["epsilon_max"] is None and line["private"] is False
    assert "∞ (not private)" in (tmp_path / "privacy.md").read_text()


def test_a_run_every_site_refuses_fails_and_says_which_limit(tmp_path, capfd):
    """Was `finished: completed`, exit 0, zero rounds trained, and a refusal that blamed the site's budget."""
    code = cli.main(["run", "digits", "dp.noise_multiplier=1.0", "dp.target_epsilon=0.1", "round_retries=0",
                     "--rounds", "2", "--run-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 1
    assert "no round produced an aggregate" in err and "run's privacy target is reached" in err
    assert "dp.target_epsilon = 0.1" in err
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["outcome"] == "failed" and report["rounds_completed"] == 0
    assert "privacy.md" in {p.name for p in tmp_path.iterdir()}
    for site in (tmp_path / "sites").iterdir():
        if site.is_dir():
            ledger = Ledger.in_dir(site)
            assert ledger.verify().ok and [e.kind for e in ledger.entries()] == ["init"]  # nothing was sent
