"""Experiment tracking on synthetic round records: MLflow lists the run with its per-round metrics, TensorBoard's
event files hold the same numbers, metrics.csv has every round, and a broken tracking server never fails a run."""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from fedhaven.server.records import RoundRecord
from fedhaven.server.tracking import TENSORBOARD_DIR, TRACKING_FILE, RunTracker, metric_name
from fedhaven.shared.schema import RunConfig, TrackingConfig


@pytest.fixture(autouse=True)
def _tracking_on(monkeypatch):
    monkeypatch.setenv("FEDHAVEN_TRACKING", "on")  # the suite runs without it (tests/conftest.py)


def _rounds() -> list[RoundRecord]:
    base = dict(attempt=1, sites_failed=0, fit_time_s=0.5, eval_time_s=0.1, secure_aggregation=True)
    out = [RoundRecord(round=0, status="initial", loss=2.3, accuracy=0.1, epsilon_max=0.0, epsilon_mean=0.0,
                       sites_ok=0, round_time_s=0.0, **base)]
    for n in (1, 2, 3):
        eps = {"hospital-a": 0.4 * n, "hospital b/2": 0.3 * n}
        out.append(RoundRecord(round=n, status="ok", loss=2.0 / n, accuracy=0.2 * n, epsilon_max=max(eps.values()),
                               epsilon_mean=sum(eps.values()) / 2, sites_ok=2, round_time_s=1.5 + n, epsilons=eps,
                               time=1_700_000_000.0 + n, **base))
    return out


def _track(run_dir: Path, rounds: list[RoundRecord], *, run: RunConfig | None = None, resuming: bool = False,
           outcome: str = "completed") -> RunTracker:
    """What the round loop does: each record appended to metrics.jsonl (the recorder), then tracked."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = RunTracker(run=run or RunConfig(), run_dir=run_dir, resuming=resuming)
    for rec in rounds:
        with (run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(asdict(rec)) + "\n")
        tracker.round(rec)
    (run_dir / "privacy.json").write_text("{}")
    tracker.finish(rounds=rounds, outcome=outcome)
    return tracker


def _mlflow(run_dir: Path):
    from mlflow import MlflowClient

    info = json.loads((run_dir / TRACKING_FILE).read_text())
    return MlflowClient(tracking_uri=info["tracking_uri"]), info


def test_mlflow_tensorboard_and_csv_hold_every_round(tmp_path):
    run_dir = tmp_path / "runs" / "run-7"
    rounds = _rounds()
    _track(run_dir, rounds, run=RunConfig(rounds=3))
    client, info = _mlflow(run_dir)
    assert info["tracking_uri"] == (tmp_path / "runs" / "mlruns").as_uri()  # the local store beside the runs
    listed = client.search_runs([info["experiment_id"]])
    assert [r.info.run_id for r in listed] == [info["run_id"]]
    run = listed[0]
    assert run.info.run_name == "run-7" and run.info.status == "FINISHED"
    assert run.data.params["rounds"] == "3" and run.data.params["dp.target_epsilon"] == "3.0"
    for key in ("accuracy", "loss", "round_time_s", "epsilon_max", metric_name("hospital b/2")):
        history = sorted((m.step, m.value) for m in client.get_metric_history(info["run_id"], key))
        expected = [(r.round, v) for r in rounds
                    if (v := (r.epsilons.get("hospital b/2") if key.startswith("epsilon/") else getattr(r, key)))
                    is not None]
        assert [h[0] for h in history] == [e[0] for e in expected], key
        assert [h[1] for h in history] == pytest.approx([e[1] for e in expected]), key
    artifacts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"metrics.jsonl", "metrics.csv", "privacy.json", "accuracy.png", "epsilon.png"} <= artifacts

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    events.Reload()
    for key in ("accuracy", "loss", "epsilon_max", metric_name("hospital-a")):
        mlflow_values = [(m.step, m.value) for m in client.get_metric_history(info["run_id"], key)]
        tb_values = sorted((e.step, e.value) for e in events.Scalars(key))
        assert [t[0] for t in tb_values] == sorted(m[0] for m in mlflow_values), key
        assert [t[1] for t in tb_values] == pytest.approx([m[1] for m in sorted(mlflow_values)], rel=1e-6), key

    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["accuracy"]) for r in rows] == pytest.approx([r.accuracy for r in rounds])
    assert float(rows[3]["epsilon/hospital b/2"]) == pytest.approx(0.9) and rows[0]["epsilon/hospital-a"] == ""


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path):
    run_dir = tmp_path / "run-1"
    rounds = _rounds()
    _track(run_dir, rounds[:2], outcome="failed")
    first = json.loads((run_dir / TRACKING_FILE).read_text())["run_id"]
    _track(run_dir, rounds[2:], resuming=True)
    client, info = _mlflow(run_dir)
    assert info["run_id"] == first and client.get_run(first).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first, "accuracy")] == [0, 1, 2, 3]


def test_an_unusable_tracking_store_is_a_warning_and_the_run_goes_on(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store should be")
    run = RunConfig(tracking=TrackingConfig(uri=(blocker / "mlruns").as_uri()))
    with caplog.at_level(logging.WARNING, logger="fedhaven"):
        _track(tmp_path / "run-2", _rounds(), run=run)
    warnings = [r.getMessage() for r in caplog.records if "experiment tracking: MLflow failed" in r.getMessage()]
    assert len(warnings) == 1 and "the run goes on without it" in warnings[0]  # said once, not every round
    assert (tmp_path / "run-2" / "metrics.csv").exists() and (tmp_path / "run-2" / TENSORBOARD_DIR).is_dir()


@pytest.mark.parametrize("how", ["config", "environment"])
def test_tracking_off_writes_only_metrics_csv(tmp_path, monkeypatch, how):
    run_dir = tmp_path / "run-3"
    if how == "environment":
        monkeypatch.setenv("FEDHAVEN_TRACKING", "off")
    rounds = [*_rounds(), replace(_rounds()[-1], round=4, epsilon_max=math.inf, epsilons={"x": math.inf})]
    _track(run_dir, rounds, run=RunConfig(tracking=TrackingConfig(enabled=how != "config")))
    assert not (tmp_path / "mlruns").exists() and not (run_dir / TENSORBOARD_DIR).exists()
    with (run_dir / "metrics.csv").open() as fh:
        last = list(csv.DictReader(fh))[-1]
    assert last["epsilon_max"] == "" and last["epsilon/x"] == ""  # not private: no number, never infinity
