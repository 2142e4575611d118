"""The privacy report, one builder for simulation and deployment: non-private is never a number."""

from __future__ import annotations

import json
import math

from fedhaven.server.privacy_report import build_privacy_report, worst_epsilon
from fedhaven.server.records import RoundRecord, SiteReport
from fedhaven.shared.config import parse
from fedhaven.shared.schema import RunConfig


def _site(name: str, eps: float, noise: float = 1.0) -> SiteReport:
    return SiteReport(site=name, num_examples=100, loss=0.5, accuracy=0.8, epsilon=eps, delta=1e-5,
                      noise_multiplier=noise, sample_rate=0.1, steps=10, total_steps=10)


def _round(**kw) -> RoundRecord:
    base = dict(round=1, status="ok", attempt=1, loss=1.0, accuracy=0.5, epsilon_max=None, epsilon_mean=None,
                sites_ok=2, sites_failed=0, round_time_s=1, fit_time_s=1, eval_time_s=0, secure_aggregation=True)
    return RoundRecord(**{**base, **kw})


def test_zero_noise_is_reported_as_not_private_never_as_zero(tmp_path):
    """Issue 10: `dp.noise_multiplier=0.0` gave "epsilon_max": 0.0 in privacy.json."""
    run = parse(RunConfig, {"dp": {"noise_multiplier": 0.0, "allow_not_private": True}})
    report = build_privacy_report(run=run, sites={"a": _site("a", math.inf, 0.0), "b": _site("b", math.inf, 0.0)},
                                  rounds=[_round()], max_weight=100.0)
    j, m = report.write(tmp_path)
    data = json.loads(j.read_text())
    assert data["epsilon_max"] is None and data["private"] is False
    assert all(s["epsilon"] is None and s["private"] is False for s in data["sites"].values())
    text = m.read_text()
    assert "NOT PRIVATE" in text and "| a | ∞ (not private) |" in text and "epsilon ∞ (not private)** at" in text


def test_dp_off_is_not_private():
    run = parse(RunConfig, {"dp": {"enabled": False}})
    data = build_privacy_report(run=run, sites={"a": _site("a", math.inf, 0.0)}, rounds=[_round()],
                                max_weight=None).data
    assert data["private"] is False and data["epsilon_max"] is None
    assert "Local differential privacy: OFF" in build_privacy_report(run=run, sites={}, rounds=[],
                                                                     max_weight=None).markdown()


def test_one_rule_for_the_maximum():
    assert worst_epsilon([]) is None
    assert worst_epsilon([1.0, 3.0]) == 3.0
    assert worst_epsilon([1.0, math.inf]) == math.inf  # one site without noise: the model is not private
    run = RunConfig()
    data = build_privacy_report(run=run, sites={"a": _site("a", 1.0), "b": _site("b", math.inf)},
                                rounds=[_round()], max_weight=1.0).data
    assert data["epsilon_max"] is None and not data["private"] and data["sites"]["a"]["private"]


def test_a_bounded_site_and_the_attempts_without_aggregate_are_in_the_report():
    run = RunConfig()
    rounds = [_round(status="failed", unanswered=("b",), sites_ok=1), _round(attempt=2)]
    report = build_privacy_report(run=run, sites={"a": _site("a", 1.0), "b": _site("b", 0.5)}, rounds=rounds,
                                  max_weight=1.0, epsilons={"a": 1.0, "b": 3.0})
    data = report.data
    assert data["sites"]["b"]["bounded"] and data["sites"]["b"]["epsilon"] == 3.0
    assert data["sites"]["b"]["epsilon_reported"] == 0.5 and data["epsilon_max"] == 3.0
    assert data["attempts_without_aggregate"] == [{"round": 1, "attempt": 1, "sites_trained": 1,
                                                   "unanswered": ["b"]}]
    text = report.markdown()
    assert "bound: a training reply was lost" in text and "no reply from b" in text
    assert "In the clear with each update" in text and "ledger position" in text


def test_the_command_to_recompute_works_for_simulated_sites():
    data = build_privacy_report(run=RunConfig(), sites={}, rounds=[], max_weight=1.0,
                                ledger_command="fl-client ledger verify --state-dir runs/x/sites/SITE").data
    assert data["recompute"]["from_ledger"] == "fl-client ledger verify --state-dir runs/x/sites/SITE"


def test_what_a_site_says_is_shown_as_text_in_the_report():
    """A site controls its name and its refusal reasons: they must not become Markdown or terminal commands."""
    hostile = "evil|site\x1b[2J<script>"
    run = RunConfig()
    rounds = [_round(status="failed", unanswered=(hostile,), sites_ok=1,
                     failures=(f"{hostile}: refused\n# All sites agreed",))]
    text = build_privacy_report(run=run, sites={hostile: _site(hostile, 1.0)}, rounds=rounds,
                                max_weight=1.0).markdown()
    assert "\x1b" not in text and "<script>" not in text and "evil|site" not in text
    assert "\n# All sites agreed" not in text and "evil\\|site\\\\x1b\\[2J\\<script\\>" in text
