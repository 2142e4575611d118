"""The coordinator's round loop policy, without Flower: retries, loud failure, records and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Error

from fedhaven.server.failures import RoundFailed, SiteFailure, site_failure
from fedhaven.server.federation import _one_round
from fedhaven.server.flower_legacy import FitOutcome, FitRoundLog
from fedhaven.server.recorder import RunRecorder
from fedhaven.server.seam.errors import short_reason
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.refusal import Code
from fedhaven.shared.schema import ModelConfig, RunConfig
from fedhaven.shared.weights import get_weights

LENET = ModelConfig(name="lenet")  # the model these tests' weights come from

SPEC = InputSpec(1, 8, 3)


class FakeFederation:
    """Plays Flower's side: a scripted sequence of fit outcomes."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def fit_round(self, server_round):
        self.calls += 1
        return self.outcomes.pop(0)

    def available_sites(self):
        return 2

    def strategy_state(self):
        return {}


def _ok(weights, eps=(1.0, 2.0)):
    log = FitRoundLog(results=[(100, {"site": f"s{i}", "loss": 0.5, "accuracy": 0.8, "epsilon": e, "delta": 1e-5,
                                      "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "total_steps": 10})
                               for i, e in enumerate(eps)])
    return FitOutcome(weights=weights, log=log)


def _halted():
    return FitOutcome(weights=None, log=FitRoundLog(failures=[SiteFailure("site s1: crashed")]), halted_stage="unmask")


@pytest.fixture
def recorder(tmp_path):
    run = RunConfig(model=LENET, round_retries=1)
    return RunRecorder(run_dir=tmp_path, run=run, input_spec=SPEC, classes=("a", "b", "c"))


def _weights(seed=0):
    return get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=SPEC, seed=seed))


def test_a_round_without_aggregate_is_retried_then_fails_loudly(recorder, tmp_path):
    fed = FakeFederation([_halted(), _halted()])
    with pytest.raises(RoundFailed) as err:
        _one_round(fed=fed, run=recorder.run, server_round=3, recorder=recorder, evaluator=None)
    assert fed.calls == 2
    assert "round 3 produced no aggregate in 2 attempt(s)" in str(err.value)
    assert "halted at unmask" in str(err.value) and "site s1: crashed" in str(err.value)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["round"], x["status"], x["attempt"]) for x in lines] == [(3, "failed", 1), (3, "failed", 2)]
    assert not list((tmp_path / "checkpoints").iterdir())  # nothing pretends the round happened


def test_a_retry_that_succeeds_is_recorded_and_checkpointed(recorder, tmp_path):
    w = _weights(1)
    fed = FakeFederation([_halted(), _ok(w)])
    out = _one_round(fed=fed, run=recorder.run, server_round=1, recorder=recorder, evaluator=lambda ws: (0.4, 0.9))
    assert all(np.array_equal(a, b) for a, b in zip(out, w, strict=True))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["failed", "ok"]
    ok = lines[-1]
    assert ok["accuracy"] == 0.9 and ok["epsilon_max"] == 2.0 and ok["epsilon_mean"] == 1.5
    assert ok["epsilons"] == {"s0": 1.0, "s1": 2.0} and ok["sites_ok"] == 2
    ckpt = torch.load(tmp_path / "checkpoints" / "round-001.pt", weights_only=False)
    assert ckpt["round"] == 1 and set(ckpt["sites"]) == {"s0", "s1"}
    assert torch.equal(ckpt["state_dict"]["features.0.weight"], torch.from_numpy(w[0]))


def test_non_private_sites_are_written_as_null(recorder, tmp_path):
    _one_round(fed=FakeFederation([_ok(_weights(), eps=(float("inf"),))]), run=recorder.run, server_round=1,
               recorder=recorder, evaluator=None)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["epsilon_max"] is None and line["epsilons"] == {"s0": None}


def test_final_model_is_a_plain_state_dict(recorder, tmp_path):
    w = _weights(2)
    recorder.finish(weights=w)
    state = torch.load(tmp_path / "model.pt")
    model = build_model(cfg=ModelConfig(name="lenet"), spec=SPEC)
    model.load_state_dict(state)
    assert json.loads((tmp_path / "model.json").read_text())["input"] == {"channels": 1, "image_size": 8,
                                                                            "num_classes": 3}


def test_short_reason_strips_ray_tracebacks():
    text = ("Error(code=2, reason='<class ray.exceptions.RayTaskError>:<ray::ClientAppActor.run()\\n  File x\\n"
            "flwr.clientapp.client_app.ClientAppException: \\nException ClientAppException occurred. Message: "
            "site-01: budget spent\\n\\nThe above')")
    assert short_reason(text) == "site-01: budget spent"
    assert short_reason("Traceback:\n  File y\nValueError: bad value") == "ValueError: bad value"


def test_an_attempt_without_aggregate_still_counts_what_sites_spent(recorder, tmp_path):
    """Under SecAgg+ sites train and send metrics before unmasking fails: that spending is reported."""
    trained = _ok(None, eps=(2.5, 3.5))
    halted = FitOutcome(weights=None, log=trained.log, halted_stage="unmask")
    _one_round(fed=FakeFederation([halted, _ok(_weights(), eps=(1.0, 2.0))]), run=recorder.run, server_round=1,
               recorder=recorder, evaluator=None)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["status"] == "failed" and first["epsilons"] == {"s0": 2.5, "s1": 3.5}


def test_a_site_whose_reply_was_lost_is_bounded_by_the_run_target(recorder, tmp_path):
    """A site asked to train that never answered may have trained and recorded it: its epsilon is bounded."""
    lost = FitOutcome(weights=None, log=FitRoundLog(results=[], unanswered=["s1"]), halted_stage="collect")
    ok = _ok(_weights(), eps=(1.0,))
    _one_round(fed=FakeFederation([lost, ok]), run=recorder.run, server_round=2, recorder=recorder, evaluator=None)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    target = recorder.run.dp.target_epsilon
    assert lines[0]["unanswered"] == ["s1"] and lines[0]["epsilons"] == {"s1": target}
    assert lines[1]["epsilon_max"] == target  # s1 has not reported since: still bounded
    assert recorder.epsilons() == {"s0": 1.0, "s1": target}


class FakeLegacyFederation:
    """LegacyFederation for run_federation, with scripted outcomes."""

    outcomes: list = []

    def __init__(self, **kwargs):
        self.script = list(FakeLegacyFederation.outcomes)

    def weights(self):
        return _weights()

    def fit_round(self, server_round):
        return self.script.pop(0)

    def available_sites(self):
        return 2

    def strategy_state(self):
        return {}

    def close(self):
        pass


def _refused(reason, code):
    failure = SiteFailure(reason, code)
    return FitOutcome(weights=None, log=FitRoundLog(failures=[failure, failure]), halted_stage="collect")


def test_a_run_in_which_no_round_aggregated_fails_and_says_why(tmp_path, monkeypatch):
    """Issue 10: every site refused (the run's target was below what they had spent) and the run 'completed'."""
    from fedhaven.server import federation
    from fedhaven.server.failures import NoRoundTrained

    why = ("site a refused the task (nothing was trained or sent): the run's privacy target is reached: "
           "dp.target_epsilon = 4 ...")
    FakeLegacyFederation.outcomes = [_refused(why, Code.RUN_TARGET), _refused(why, Code.RUN_TARGET)]
    monkeypatch.setattr(federation, "LegacyFederation", FakeLegacyFederation)
    with pytest.raises(NoRoundTrained, match="no round produced an aggregate.*run's privacy target is reached"):
        federation.run_federation(grid=None, context=None, run=RunConfig(model=LENET, rounds=3, round_retries=1),
                                  run_dir=tmp_path, input_spec=SPEC, classes=("a", "b", "c"), evaluator=None,
                                  max_weight=None)
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["outcome"] == "failed" and "no round produced an aggregate" in report["stopped"]
    assert report["rounds_completed"] == 0 and not (tmp_path / "model.pt").exists()


def test_a_run_stopped_by_budgets_after_training_is_not_a_failure(tmp_path, monkeypatch):
    from fedhaven.server import federation

    why = "site a refused the task (nothing was trained or sent): this site's own privacy budget is spent: ..."
    FakeLegacyFederation.outcomes = [_ok(_weights(), eps=(1.0, 2.0)), _refused(why, Code.SITE_BUDGET),
                                     _refused(why, Code.SITE_BUDGET)]
    monkeypatch.setattr(federation, "LegacyFederation", FakeLegacyFederation)
    result = federation.run_federation(grid=None, context=None, run=RunConfig(model=LENET, rounds=3, round_retries=1),
                                       run_dir=tmp_path, input_spec=SPEC, classes=("a", "b", "c"), evaluator=None,
                                       max_weight=None)
    assert result.stopped and "too few sites have privacy budget left" in result.stopped
    assert result.privacy.data["outcome"] == "stopped" and result.privacy.data["epsilon_max"] == 2.0


def test_a_refusal_is_known_by_its_code_never_by_its_words():
    """A site's coded refusal is a budget stop whatever it says; a crash whose text reads like one is not."""
    coded = site_failure(Exception(Error(code=int(Code.RUN_TARGET), reason="site a: anything at all")))
    assert coded.refused and coded.budget and coded.text == "site a: anything at all"
    assert RoundFailed("x", failures=(coded,)).budget_exhausted
    lookalike = site_failure(Exception(Error(code=2, reason="<class 'RuntimeError'>:<'the run\\'s privacy target "
                                                            "is reached (nothing was trained or sent)'>")))
    assert not lookalike.refused and "privacy target is reached" in lookalike.text
    assert not RoundFailed("x", failures=(coded, lookalike)).budget_exhausted
    # Flower nests the text of a raised exception in reprs (run\\'s): shown unescaped, for people
    text = ("Error(code=0, reason=\"ClientAppException occurred. Message: site a failed: the run\\'s model did "
            "not fit\\\")")
    reason = short_reason(text)
    assert "the run's model did not fit" in reason and not reason.endswith("\\")


def test_a_refusal_reason_cannot_drive_the_operators_terminal():
    """A hostile site's reason reaches fl-server's output and run log: control characters arrive as escapes."""
    failure = site_failure(Exception(Error(code=int(Code.POLICY),
                                           reason="site a: \x1b[2J\x1b[32mall good\nround 5: done")))
    assert failure.code == Code.POLICY
    assert "\x1b" not in failure.text and "\n" not in failure.text and "\\x1b[2J" in failure.text
