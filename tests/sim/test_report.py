"""fl-sim's summary reads the privacy report: never a crash, never a number for "not private"."""

from __future__ import annotations

import math
from pathlib import Path

from fedhaven.server.federation import RunResult
from fedhaven.server.privacy_report import build_privacy_report
from fedhaven.server.records import RoundRecord, SiteReport
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.report import summarize


def test_a_zero_noise_run_summarises_as_not_private(tmp_path: Path):
    """Issue 10: `fl-sim run digits dp.noise_multiplier=0.0 --rounds 1` ended in a TypeError in report.py."""
    exp = load_experiment(source="digits", overrides=["rounds=1", "dp.noise_multiplier=0.0",
                                                      "dp.allow_not_private=true"])
    site = SiteReport(site="site-00", num_examples=100, loss=0.5, accuracy=0.8, epsilon=math.inf, delta=1e-5,
                      noise_multiplier=0.0, sample_rate=0.1, steps=10, total_steps=10)
    rnd = RoundRecord(round=1, status="ok", attempt=1, loss=0.4, accuracy=0.9, epsilon_max=math.inf,
                      epsilon_mean=None, sites_ok=1, sites_failed=0, round_time_s=1, fit_time_s=1, eval_time_s=0,
                      secure_aggregation=True, private=False)
    report = build_privacy_report(run=exp.run_config(), sites={"site-00": site}, rounds=[rnd], max_weight=100.0)
    result = RunResult(run_dir=tmp_path, weights=[], rounds=[rnd], sites={"site-00": site}, wall_time_s=1.0,
                       privacy=report)
    summary = summarize(exp=exp, result=result, wall_time_s=1.0)
    text = summary.text()
    assert "NOT PRIVATE" in text and "∞" in text
    assert summary.data["epsilon_max"] is None and summary.data["private"] is False
    assert summary.data["epsilon_per_site"] == {"site-00": None}
