"""fl-sim end to end on digits with a simulated attacker: a NaN or infinite update never reaches the global model,
with and without SecAgg+, and every rejection is recorded with its reason."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedhaven.sim import cli

pytestmark = pytest.mark.slow
TINY = ["train.local_epochs=3", "train.lr=0.2", "train.batch_size=64", "dp.target_epsilon=8.0"]


def _lines(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_under_secagg_a_nan_site_gets_every_round_rejected_and_the_run_fails(tmp_path, capfd):
    code = cli.main(["run", "digits", *TINY, 'attack.kind="nan"', "attack.sites=[0]", "--rounds", "3",
                     "--run-dir", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == 1 and "FAILED: 3 rounds in a row were rejected (robust.max_rejected = 3)" in err
    assert "SIMULATED ATTACK (simulation only): site-00 send nan updates" in err
    lines = _lines(tmp_path)
    assert [x["status"] for x in lines] == ["initial", "rejected", "rejected", "rejected"]
    for x in lines[1:]:
        assert "more than sites following SecAgg+ can produce" in x["rejected"] and x["failures"] == []
        assert x["update_norm"] > 100 * x["update_bound"]  # SecAgg+ turned the NaN into huge, finite numbers
        assert x["sites_ok"] == 3 and len(x["epsilons"]) == 3  # what the sites spent is still counted
    assert not list((tmp_path / "checkpoints").glob("*.pt")) and not (tmp_path / "model.pt").exists()
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["outcome"] == "failed" and "rounds in a row were rejected" in report["stopped"]
    assert [r["round"] for r in report["rounds_rejected"]] == [1, 2, 3]


def test_without_secagg_an_infinite_update_is_rejected_by_site_and_the_others_train(tmp_path, capfd):
    code = cli.main(["run", "digits", *TINY, 'attack.kind="inf"', "attack.sites=[1]", "attack.from_round=2",
                     "--rounds", "3", "--no-secagg", "--run-dir", str(tmp_path)])
    assert code == 0, capfd.readouterr().err
    lines = _lines(tmp_path)
    assert [x["status"] for x in lines] == ["initial", "ok", "ok", "ok"]
    assert lines[1]["failures"] == [] and lines[1]["sites_ok"] == 3  # the attack starts in round 2
    for x in lines[2:]:
        (why,) = x["failures"]
        assert why.startswith("site-01: update rejected (") and "infinite value(s)" in why
        assert x["sites_ok"] == 2 and x["sites_failed"] == 1
    assert lines[3]["accuracy"] > lines[0]["accuracy"] + 0.2 and lines[3]["loss"] < lines[1]["loss"]
    state = torch.load(tmp_path / "model.pt")
    assert all(torch.isfinite(t).all() for t in state.values())
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["outcome"] == "completed" and any("site-01: update rejected" in f["reason"]
                                                    for f in report["site_failures"])
    assert math.isfinite(json.loads((tmp_path / "summary.json").read_text())["final_accuracy"])
