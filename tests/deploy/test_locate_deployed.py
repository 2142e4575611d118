"""Deployed on loopback (TLS, node authentication, pinned roster): one site among eight sends NaN under SecAgg+; the
coordinator locates it by re-masked subgroup sums, names it, completes the round from the other seven and leaves it
out; the honest sites' ledgers verify and hold one update per round (re-masking spent nothing). The coordinator is
then killed, started again and the run resumed from round 1's checkpoint: the located site stays out of the resumed
run (known by its registered name).

Eight sites: the fewest for which the planner finds a plan wherever the bad site is, with groups of at least three
(`policy.locate_min_group`, the default; with 4 to 7 sites, and with 9, some position has none). The bad site is a
test-only program (`locate_bad_site.py`): fedhaven's installed ClientApp with the attack harness's update mod.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.shared.accounting import epsilon
from fedhaven.sim.loopback import LENET_TRAINING, LoopbackFederation, run_toml

pytestmark = [pytest.mark.slow, pytest.mark.locate]

SITES = tuple(f"hospital-{c}" for c in "abcdefgh")
BAD = "hospital-c"
HELPER = Path(__file__).with_name("locate_bad_site.py")


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if x.startswith("{") and x.endswith("}")]


def _updates(fed: LoopbackFederation, name: str) -> list:
    return [e for e in Ledger.in_dir(fed.site_dirs[name] / "state").entries() if e.kind == "update"]


def _honest_ledgers_verify(fed: LoopbackFederation, run_dir: Path, *, updates: int) -> None:
    privacy = json.loads((run_dir / "privacy.json").read_text())
    for name in SITES:
        if name == BAD:
            continue
        ledger = Ledger.in_dir(fed.site_dirs[name] / "state")
        assert ledger.verify().ok, (name, ledger.verify().problems)
        assert len(_updates(fed, name)) == updates, name  # one per round trained: nothing for re-masking
        fresh = epsilon(history=ledger.history(), delta=1e-5)
        assert privacy["sites"][name]["epsilon"] == pytest.approx(fresh, rel=1e-9), name


def test_a_deployed_bad_site_is_located_named_left_out_and_stays_out_after_a_resume():
    fed = LoopbackFederation.in_temp(prefix="fedhaven-locate-", site_names=SITES, cpu_threads=1)
    try:
        fed.provision()
        fed.start_coordinator()
        for name in SITES:
            if name == BAD:
                fed.spawn(name, Path(sys.executable).name, str(HELPER), "start", "--attack", "nan", "--config",
                          str(fed.site_dirs[name] / "site.toml"))
            else:
                fed.start_site(name)
        fed.wait_online(len(SITES), timeout=400)
        text = run_toml(rounds=2, min_sites=7, timeout=180,
                        training=LENET_TRAINING.replace("local_epochs = 3.0", "local_epochs = 1.0"))
        res = fed.run(text, timeout=1200)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]
        run_dir = fed.run_dir_of(out)
        lines = _metrics(run_dir)
        first, second = [x for x in lines if x["status"] == "ok"]
        assert first["located"] == [BAD] and f"located {BAD}" in first["locate_note"], first
        assert f"{BAD}: its update broke the round's sum" in out  # the operator's output names it
        assert (first["sites_ok"], first["sites_rejected"]) == (7, 1)
        assert 0 < first["update_norm"] <= first["update_bound"]
        assert BAD not in second["epsilons"] or second["epsilons"][BAD] == first["epsilons"][BAD]
        assert len(_updates(fed, BAD)) == 1  # asked in round 1 only
        _honest_ledgers_verify(fed, run_dir, updates=2)
        located = json.loads((run_dir / "privacy.json").read_text())["located"]
        assert [r["sites"] for r in located] == [[BAD]]
        # the coordinator crashed after round 1: killed, round 2's checkpoint and the release lost, started again
        fed.kill("coordinator", signal.SIGKILL)
        for lost in ("model.pt", "model.json", "privacy.json", "privacy.md", "checkpoints/round-002.pt"):
            (run_dir / lost).unlink(missing_ok=True)
        fed.start_coordinator()
        fed.wait_online(len(SITES), timeout=400)
        res = fed.resume(run_dir.name, timeout=900)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]
        (resumed,) = [x for x in _metrics(run_dir) if x["status"] == "resumed"]
        assert resumed["round"] == 1 and f"left out as located: {BAD} (located in round 1" in resumed["failures"][0]
        redone = [x for x in _metrics(run_dir) if x["status"] == "ok"][-1]
        assert redone["round"] == 2 and redone["located"] == [] and redone["sites_ok"] == 7
        assert len(_updates(fed, BAD)) == 1  # never asked again, in the resumed run either
        _honest_ledgers_verify(fed, run_dir, updates=3)  # round 2 trained again after the resume
    finally:
        fed.stop()
        shutil.rmtree(fed.root, ignore_errors=True)
