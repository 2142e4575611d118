"""Checkpoints a run can be continued from: everything saved comes back, a bad last checkpoint falls back, a changed
config is refused; and a simulated run continued with `fl-sim run --resume` ends as if uninterrupted."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest

from fedhaven.server.checkpoints import ResumeError, load_checkpoint
from fedhaven.server.flower_legacy import _layers, build_strategy, restore_strategy_state, strategy_state
from fedhaven.server.recorder import RunRecorder
from fedhaven.server.records import CentralNoise, RoundRecord, SiteReport, read_rounds
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import CentralDPConfig, ModelConfig, RunConfig, StrategyConfig
from fedhaven.shared.weights import get_weights

LENET = ModelConfig(name="lenet")  # the model these tests' weights come from

SPEC = InputSpec(1, 8, 3)


def _recorder(tmp_path, run: RunConfig, **kw) -> RunRecorder:
    return RunRecorder(run_dir=tmp_path, run=run, input_spec=SPEC, classes=("a", "b", "c"), **kw)


def _weights(seed: int) -> list[np.ndarray]:
    return get_weights(build_model(cfg=ModelConfig(name="lenet"), spec=SPEC, seed=seed, dp=False))


def _site(name: str, eps: float) -> SiteReport:
    return SiteReport(site=name, num_examples=10, loss=0.1, accuracy=0.9, epsilon=eps, delta=1e-5,
                      noise_multiplier=1.1, sample_rate=0.1, steps=7, total_steps=14)


def test_a_checkpoint_brings_back_weights_sites_and_strategy_state(tmp_path):
    run = RunConfig(model=LENET, rounds=5, strategy=StrategyConfig(name="fedadam"))
    rec = _recorder(tmp_path, run)
    rec.site_reports([_site("a", 1.5)], unanswered=["b"], server_round=2, attempt=1)
    strat = build_strategy(run=run, initial=_weights(0), fit_config=lambda r: {})
    _layers(strat)[1].m_t = [np.full(w.shape, 0.25, dtype=np.float32) for w in _weights(0)]
    _layers(strat)[1].v_t = [np.full(w.shape, 0.5, dtype=np.float32) for w in _weights(0)]
    rec.checkpoint(server_round=2, weights=_weights(1), strategy=strategy_state(strat))
    ckpt, skipped = load_checkpoint(run_dir=tmp_path, run=replace(run, resume_from=str(tmp_path)), input_spec=SPEC)
    assert skipped == [] and ckpt.round == 2
    assert all(np.array_equal(a, b) for a, b in zip(ckpt.weights, _weights(1), strict=True))
    fresh = build_strategy(run=run, initial=_weights(0), fit_config=lambda r: {})
    restore_strategy_state(fresh, ckpt.blob["strategy"], weights=ckpt.weights)
    _, adam = _layers(fresh)  # FedAdam under fedhaven's guard
    assert all(np.all(m == 0.25) for m in adam.m_t) and all(np.all(v == 0.5) for v in adam.v_t)
    assert all(np.array_equal(a, b) for a, b in zip(adam.current_weights, _weights(1), strict=True))
    again = _recorder(tmp_path, run, resuming=True)
    again.restore(ckpt)
    assert again.sites["a"].epsilon == 1.5 and "b" in again.unanswered
    assert again.unanswered["a"] == (3, 0)  # might have trained in the lost round: bounded until it reports


def test_central_dp_state_survives(tmp_path):
    run = RunConfig(model=LENET,
                    central_dp=CentralDPConfig(enabled=True, clipping="adaptive", clipped_count_stddev=1.0),
                    secagg=RunConfig().secagg)
    strat = build_strategy(run=run, initial=_weights(0), fit_config=lambda r: {})
    strat.inner.clipping_norm = 0.37
    strat.inner.applied = [CentralNoise(1, 3, 1.0, 1.0, 0.4)]
    rec = _recorder(tmp_path, run)
    rec.checkpoint(server_round=1, weights=_weights(0), strategy=strategy_state(strat))
    ckpt, _ = load_checkpoint(run_dir=tmp_path, run=run, input_spec=SPEC)
    fresh = build_strategy(run=run, initial=_weights(0), fit_config=lambda r: {})
    restore_strategy_state(fresh, ckpt.blob["strategy"], weights=ckpt.weights)
    assert fresh.inner.clipping_norm == pytest.approx(0.37) and fresh.inner.applied == strat.inner.applied


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "pickle"])
def test_a_bad_last_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    run = RunConfig(model=LENET, rounds=5)
    rec = _recorder(tmp_path, run)
    for r in (1, 2, 3):
        rec.checkpoint(server_round=r, weights=_weights(r), strategy={})
    last = tmp_path / "checkpoints" / "round-003.pt"
    blob = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        last.write_bytes(b"\x00not a checkpoint" * 100)
    elif damage == "empty":
        last.write_bytes(b"")
    else:  # a pickle that would run code: never unpickled (weights_only)
        import pickle

        class Evil:
            def __reduce__(self):
                return (exec, ("open('/tmp/fedhaven-pwned', 'w').write('x')",))

        last.write_bytes(pickle.dumps({"format": 2, "evil": Evil()}))
    ckpt, skipped = load_checkpoint(run_dir=tmp_path, run=run, input_spec=SPEC)
    assert ckpt.round == 2 and len(skipped) == 1 and "round-003.pt unreadable" in skipped[0]
    assert all(np.array_equal(a, b) for a, b in zip(ckpt.weights, _weights(2), strict=True))
    if damage == "pickle":
        import os

        assert not os.path.exists("/tmp/fedhaven-pwned")


def test_nothing_readable_or_another_config_is_refused(tmp_path):
    run = RunConfig(model=LENET, rounds=5)
    with pytest.raises(ResumeError, match="no readable checkpoint"):
        load_checkpoint(run_dir=tmp_path, run=run, input_spec=SPEC)
    _recorder(tmp_path, run).checkpoint(server_round=1, weights=_weights(0), strategy={})
    with pytest.raises(ResumeError, match="other settings.*rounds"):
        load_checkpoint(run_dir=tmp_path, run=replace(run, rounds=9), input_spec=SPEC)
    # where the run is written and the resume pointer are not part of what it trains
    load_checkpoint(run_dir=tmp_path, run=replace(run, output_dir="/elsewhere", resume_from=str(tmp_path)),
                    input_spec=SPEC)


def test_metrics_read_back_skip_a_torn_line(tmp_path):
    rec = _recorder(tmp_path, RunConfig(model=LENET))
    rec.record(RoundRecord(round=1, status="ok", attempt=1, loss=0.5, accuracy=0.8, epsilon_max=None,
                           epsilon_mean=None, sites_ok=2, sites_failed=0, round_time_s=1.0, fit_time_s=1.0,
                           eval_time_s=0.1, secure_aggregation=True, epsilons={"a": math.inf},
                           failures=("x",)))
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 2, "status": "o')  # the process died mid-write
    rounds = read_rounds(tmp_path)
    assert len(rounds) == 1 and rounds[0].failures == ("x",) and rounds[0].epsilons == {"a": math.inf}


@pytest.mark.slow
def test_fl_sim_resume_continues_an_interrupted_run(tmp_path):
    """A 4-round digits run cut after round 3 with its round-3 checkpoint corrupt: resumed from round 2, it ends
    with every round, one metrics.jsonl, a model and a privacy report whose epsilons are the sites' ledgers'."""
    from fedhaven.client.ledger import Ledger
    from fedhaven.sim.cli import main as fl_sim

    run_dir = tmp_path / "run"
    args = ["digits", "--rounds", "4", "--run-dir", str(run_dir), "dp.noise_multiplier=1.5", "dp.target_epsilon=60",
            "robust.max_update_norm=100.0"]  # above the sites' norms: from round 2 the bound follows them
    assert fl_sim(["run", *args]) == 0
    # what a crash during round 4 leaves: no model, no report, round 4's record torn, round 3's checkpoint garbage
    for name in ("model.pt", "model.json", "privacy.json", "privacy.md", "checkpoints/round-004.pt"):
        (run_dir / name).unlink()
    (run_dir / "checkpoints" / "round-003.pt").write_bytes(b"\x00" * 64)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:-1]) + '\n{"round": 4, "sta')
    assert fl_sim(["run", "--resume", str(run_dir)]) == 0
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.startswith('{"') and
              x.endswith("}")]
    resumed = [r for r in rounds if r["status"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] == 2 and "round-003.pt unreadable" in resumed[0]["failures"][0]
    assert [r["round"] for r in rounds if r["status"] == "ok"] == [1, 2, 3, 3, 4]
    # [robust]'s bound follows the site norms of round 2 (kept in its checkpoint), as it did before the crash
    bounds = [r["update_bound"] for r in rounds if r["status"] == "ok"]
    assert bounds[2] == pytest.approx(bounds[3]) and bounds[3] < bounds[0]
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert privacy["rounds_completed"] == 4 and (run_dir / "model.pt").exists()
    from fedhaven.shared.accounting import epsilon

    for name, site in privacy["sites"].items():
        ledger = Ledger.in_dir(run_dir / "sites" / name)
        assert ledger.verify().ok
        fresh = epsilon(history=ledger.history(), delta=1e-5)
        assert site["epsilon"] == pytest.approx(fresh, rel=1e-9)  # the lost round 3 is in it too
        assert fresh <= 60
    shutil.rmtree(run_dir)
