"""The coordinator dies in the middle of a run: it is restarted and the run resumed, with nothing lost."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.shared.accounting import epsilon
from fedhaven.sim.loopback import LoopbackFederation, run_toml

pytestmark = pytest.mark.slow
TARGET = 6.0
RUN = run_toml(rounds=4, min_sites=3, retries=1, timeout=60, target=TARGET)


def updates(site_dir: Path) -> list:
    """The updates a site's ledger recorded (its `init` entry aside)."""
    return [e for e in Ledger.in_dir(site_dir / "state").entries() if e.kind == "update"]


def metrics(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_round(run_dir: Path, rnd: int, *, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["round"] == rnd and r["status"] == "ok" for r in metrics(run_dir)) if (
            run_dir / "metrics.jsonl").exists() else True:
        assert time.monotonic() < deadline, f"round {rnd} did not complete in {timeout} s"
        time.sleep(0.5)


def kill_after_round_2_trains_round_3(fed: LoopbackFederation) -> Path:
    """Submit RUN, let rounds 1-2 complete and every site train round 3, then SIGKILL `fl-server start`."""
    fed.submit(RUN)
    fed.wait_for_log("operator", "submitted; results in ", timeout=120)
    run_dir = fed.run_dir_of(fed.log("operator"))
    wait_round(run_dir, 2)
    for name in fed.site_names:  # round 3's collect stage: every site has trained and recorded it
        fed.wait_for_log(name, "Sent successfully", count=11, timeout=300)
    fed.kill("coordinator", signal.SIGKILL)
    fed.kill("operator", signal.SIGTERM)
    return run_dir


def test_coordinator_killed_mid_run_is_resumed_and_the_run_finishes(observe):
    obs = observe("coordinator SIGKILLed during round 3 of 4 (after every site trained it), restarted, "
                  "`fl-server run --resume`",
                  "the run finishes in the same run directory with every round, the lost round's spending in "
                  "every site's epsilon, each epsilon equal to its ledger and within the target; accuracy within "
                  "noise of an uninterrupted run")
    plain = LoopbackFederation.in_temp(prefix="fedhaven-faults-plain-")
    try:
        plain.start()
        res = plain.run(RUN)
        assert res.returncode == 0, res.stdout + res.stderr
        reference = [r for r in metrics(plain.run_dir_of(res.stdout + res.stderr)) if r["status"] == "ok"][-1]
    finally:
        plain.stop()
    obs.observed.append(f"uninterrupted run: {100 * reference['accuracy']:.1f}% after 4 rounds")
    fed = LoopbackFederation.in_temp(prefix="fedhaven-faults-resume-")
    try:
        fed.start()
        run_dir = kill_after_round_2_trains_round_3(fed)
        lost = {n: len(updates(d)) for n, d in fed.site_dirs.items()}
        assert all(n == 3 for n in lost.values()), lost  # rounds 1, 2 and the lost round 3 left every site
        obs.observed.append("killed after every site sent round 3 (3 ledger entries each)")
        fed.start_coordinator()
        fed.wait_online(3, timeout=180)
        assert f"run {run_dir.name} stopped after round 2 of 4" in fed.log("coordinator")
        res = fed.resume(run_dir.name)
        assert res.returncode == 0, res.stdout + res.stderr
        rounds = metrics(run_dir)
        assert [r["round"] for r in rounds if r["status"] == "resumed"] == [2]
        assert sorted({r["round"] for r in rounds if r["status"] == "ok"}) == [1, 2, 3, 4]
        final = [r for r in rounds if r["status"] == "ok"][-1]
        privacy = json.loads((run_dir / "privacy.json").read_text())
        assert privacy["rounds_completed"] == 4 and privacy["outcome"] == "completed"
        for name, d in fed.site_dirs.items():
            ledger = Ledger.in_dir(d / "state")
            assert ledger.verify().ok and len(updates(d)) == 5  # 1, 2, lost 3, 3, 4
            fresh = epsilon(history=ledger.history(), delta=1e-5)
            assert privacy["sites"][name]["epsilon"] == pytest.approx(fresh, rel=1e-9)
            assert fresh <= TARGET * (1 + 1e-6)
        eps = ", ".join(f"{privacy['sites'][n]['epsilon']:.3f}" for n in fed.site_names)
        obs.observed.append(f"resumed from round 2, finished: rounds 1-4 in one metrics.jsonl, "
                            f"{100 * final['accuracy']:.1f}%, epsilons {eps} = ledgers (5 entries each), <= {TARGET}")
        assert final["accuracy"] >= reference["accuracy"] - 0.15, (final["accuracy"], reference["accuracy"])
    finally:
        fed.stop()


def test_a_corrupt_last_checkpoint_resumes_from_the_one_before(observe):
    obs = observe("coordinator SIGKILLed in round 3, its last checkpoint (round 2) then corrupted, resumed",
                  "resume falls back to round 1's checkpoint, says so, and the run finishes")
    fed = LoopbackFederation.in_temp(prefix="fedhaven-faults-corrupt-")
    try:
        fed.start()
        run_dir = kill_after_round_2_trains_round_3(fed)
        (run_dir / "checkpoints" / "round-002.pt").write_bytes(b"\x00garbage" * 512)
        fed.start_coordinator()
        fed.wait_online(3, timeout=180)
        res = fed.resume(run_dir.name)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        resumed = [r for r in metrics(run_dir) if r["status"] == "resumed"]
        assert resumed and resumed[0]["round"] == 1 and "round-002.pt unreadable" in resumed[0]["failures"][0]
        assert "RESUMED" in out
        assert json.loads((run_dir / "privacy.json").read_text())["rounds_completed"] == 4
        obs.observed.append("fell back to round 1 (round-002.pt unreadable, said in metrics and in fl-server run); "
                            "rounds 2-4 retrained; finished")
    finally:
        fed.stop()
