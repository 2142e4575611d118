"""The coordinator's round loop policy, without Flower: retries, loud failure, records and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedhaven.server.federation import _one_round
from fedhaven.server.flower_legacy import FitOutcome, FitRoundLog, short_reason
from fedhaven.server.recorder import RoundFailed, RunRecorder
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import ModelConfig, RunConfig
from fedhaven.shared.weights import get_weights

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


def _ok(weights, eps=(1.0, 2.0)):
    log = FitRoundLog(results=[(100, {"site": f"s{i}", "loss": 0.5, "accuracy": 0.8, "epsilon": e, "delta": 1e-5,
                                      "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 10, "total_steps": 10})
                               for i, e in enumerate(eps)])
    return FitOutcome(weights=weights, log=log)


def _halted():
    return FitOutcome(weights=None, log=FitRoundLog(failures=["site s1: refused"]), halted_stage="unmask")


@pytest.fixture
def recorder(tmp_path):
    run = RunConfig(round_retries=1)
    return RunRecorder(run_dir=tmp_path, run=run, input_spec=SPEC, classes=("a", "b", "c"))


def _weights(seed=0):
    return get_weights(build_model(cfg=ModelConfig(), spec=SPEC, seed=seed))


def test_a_round_without_aggregate_is_retried_then_fails_loudly(recorder, tmp_path):
    fed = FakeFederation([_halted(), _halted()])
    with pytest.raises(RoundFailed) as err:
        _one_round(fed=fed, run=recorder.run, server_round=3, recorder=recorder, evaluator=None)
    assert fed.calls == 2
    assert "round 3 produced no aggregate in 2 attempt(s)" in str(err.value)
    assert "halted at unmask" in str(err.value) and "site s1: refused" in str(err.value)
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
    model = build_model(cfg=ModelConfig(), spec=SPEC)
    model.load_state_dict(state)
    assert json.loads((tmp_path / "model.json").read_text())["input"] == {"channels": 1, "image_size": 8,
                                                                            "num_classes": 3}


def test_short_reason_strips_ray_tracebacks():
    text = ("Error(code=2, reason='<class ray.exceptions.RayTaskError>:<ray::ClientAppActor.run()\\n  File x\\n"
            "flwr.clientapp.client_app.ClientAppException: \\nException ClientAppException occurred. Message: "
            "site-01: budget spent\\n\\nThe above')")
    assert short_reason(text) == "site-01: budget spent"
    assert short_reason("Traceback:\n  File y\nValueError: bad value") == "ValueError: bad value"
