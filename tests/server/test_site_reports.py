"""Whatever a site puts in its round metrics, the coordinator's bookkeeping survives it, and a privacy number it
cannot read is stated as infinite (pessimistic), never smaller."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fedhaven.server.federation import site_report
from fedhaven.server.privacy_report import build_privacy_report
from fedhaven.server.recorder import RunRecorder
from fedhaven.shared.schema import InputSpec, RunConfig

HONEST = {"site": "a", "num_examples": 120, "loss": 0.4, "accuracy": 0.9, "epsilon": 2.5, "delta": 1e-5,
          "noise_multiplier": 1.1, "sample_rate": 0.25, "steps": 12, "total_steps": 24, "train_time_s": 0.8,
          "update_norm": 3.0}


def test_an_honest_report_is_read_as_sent():
    r = site_report(num_examples=120, metrics=HONEST)
    assert (r.site, r.num_examples, r.epsilon, r.noise_multiplier, r.sample_rate, r.steps, r.total_steps) == \
        ("a", 120, 2.5, 1.1, 0.25, 12, 24)


def test_garbage_in_a_privacy_field_makes_the_stated_epsilon_infinite():
    for key, bad in [("epsilon", "abc"), ("epsilon", math.nan), ("epsilon", -1.0), ("noise_multiplier", "x"),
                     ("noise_multiplier", -0.5), ("sample_rate", 7.0), ("sample_rate", math.nan),
                     ("steps", 2.5), ("steps", -3), ("total_steps", math.inf), ("steps", "many")]:
        r = site_report(num_examples=120, metrics={**HONEST, key: bad})
        assert r.epsilon == math.inf, (key, bad)
        assert r.noise_multiplier >= 0 and 0 <= r.sample_rate <= 1 and r.steps >= 0 and r.total_steps >= 0


def test_garbage_counts_and_metrics_fall_back_and_never_raise():
    r = site_report(num_examples=77, metrics={**HONEST, "num_examples": math.inf, "loss": "low", "accuracy": None,
                                              "train_time_s": b"\x00", "site": "x" * 10_000})
    assert r.num_examples == 77 and math.isnan(r.loss) and math.isnan(r.accuracy) and math.isnan(r.train_time_s)
    assert len(r.site) == 200 and r.epsilon == 2.5  # nothing privacy-related was garbage


anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=20), st.binary(max_size=8))


@settings(max_examples=60, deadline=None)
@given(metrics=st.dictionaries(st.sampled_from(sorted(HONEST)), anything, max_size=len(HONEST)),
       n=st.integers(0, 10_000))
def test_any_metrics_give_a_report_the_recorder_and_privacy_report_accept(tmp_path_factory, metrics, n):
    r = site_report(num_examples=n, metrics=metrics)
    assert isinstance(r.num_examples, int) and r.num_examples >= 0 and r.steps >= 0
    assert not math.isnan(r.epsilon) and r.epsilon >= 0
    run = RunConfig()
    rec = RunRecorder(run_dir=tmp_path_factory.mktemp("run"), run=run, input_spec=InputSpec(1, 8, 3),
                      classes=("a", "b", "c"), on_round=None, resuming=False)
    rec.site_reports([r], server_round=1, attempt=1)
    report = build_privacy_report(run=run, sites=rec.sites, rounds=[], max_weight=None, epsilons=rec.epsilons(),
                                  histories=rec.histories)
    assert report.data["sites"][r.site]["epsilon"] is None or report.data["sites"][r.site]["epsilon"] >= 0


def test_a_delta_that_is_not_the_runs_or_huge_numbers_never_make_a_smaller_epsilon():
    for bad in (math.nan, 0.0, 0.9, 2e-5, "x", 10**400):
        r = site_report(num_examples=120, metrics={**HONEST, "delta": bad}, max_delta=1e-5)
        assert r.epsilon == math.inf, bad  # an epsilon at a larger (or unknown) delta says less than it seems
    assert site_report(num_examples=120, metrics={**HONEST, "delta": 1e-6}, max_delta=1e-5).epsilon == 2.5
    for key in ("epsilon", "steps", "num_examples", "loss"):
        site_report(num_examples=120, metrics={**HONEST, key: 10**400})  # never raises
