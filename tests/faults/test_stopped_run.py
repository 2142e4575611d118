"""A run stopped in the middle of a SecAgg+ round leaves nothing on a site that holds up the next run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.sim.loopback import LoopbackFederation, cli, run_toml

pytestmark = pytest.mark.slow
TIMEOUT = 30  # SecAgg+ stage timeout of these runs


def rounds_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def submitted(fed: LoopbackFederation, since: int, *, timeout: float = 120) -> Path:
    """The run directory of the `fl-server run` whose output starts at `since` in the operator's log."""
    deadline = time.monotonic() + timeout
    while "submitted; results in" not in fed.log("operator")[since:]:
        assert time.monotonic() < deadline, fed.log("operator")[since:][-3000:]
        time.sleep(0.2)
    return fed.run_dir_of(fed.log("operator")[since:])


def test_a_run_stopped_mid_secagg_round_does_not_hold_up_the_next(fed, observe):
    obs = observe("a run stopped mid SecAgg+ round while a site is receiving the round's next message",
                  "the next run's round 1 succeeds at its first attempt with all sites; the message of the stopped "
                  "run is never handed to the site's executor; every ledger verifies and holds nothing of the "
                  "stopped run")
    site = "hospital-c"
    supernode = json.loads((fed.site_dirs[site] / "state" / "site.json").read_text())["supernode"]
    start = len(fed.log("operator"))
    first = fed.submit(run_toml(rounds=2, min_sites=2, retries=1, timeout=TIMEOUT, target=8.0))
    stopped = submitted(fed, start)
    # hospital-c answered the setup stage; its SuperNode now waits in a pull for the share-keys message: freeze it
    # there, so that the message reaches it (in its socket) before the stop and is taken in after it
    fed.wait_for_log(site, "Sent successfully", count=1, timeout=300)
    received = fed.log(site).count("Receiving: train message")
    time.sleep(0.2)
    os.kill(supernode, signal.SIGSTOP)
    try:
        fed.wait_for_log("hospital-a", "Receiving: train message", count=2, timeout=120)  # share keys went out
        time.sleep(1.0)  # hospital-c's held pull has been answered too
        res = cli("fl-server", "stop", "--run", stopped.name.removeprefix("run-"), "--state-dir", str(fed.state))
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        os.kill(supernode, signal.SIGCONT)
    first.wait(timeout=180)  # `fl-server run` of the stopped run returns
    fed.wait_for_log(site, "Receiving: train message", count=received + 1, timeout=60)
    t0 = time.monotonic()
    start = len(fed.log("operator"))
    second = fed.submit(run_toml(rounds=1, min_sites=2, retries=1, timeout=TIMEOUT, target=8.0))
    run_dir = submitted(fed, start)
    assert second.wait(timeout=600) == 0, fed.log("operator")[start:][-4000:]
    took = time.monotonic() - t0
    log = fed.log(site)
    assert "Ignoring message" in log, "the stopped run's message did not reach hospital-c after the stop"
    obs.observed.append("the stopped run's share-keys message reached hospital-c after the stop (ignored)")
    assert "could not take the task" not in log, log[-4000:]
    obs.observed.append("its executor was never handed that message")
    round1 = [r for r in rounds_of(run_dir) if r["round"] == 1]
    assert [(r["status"], r["attempt"], r["sites_ok"]) for r in round1] == [("ok", 1, 3)], round1
    obs.observed.append(f"next run: round 1 ok at attempt 1 with 3/3 sites, {took:.0f} s from submission to end")
    run_a = int(stopped.name.removeprefix("run-"))
    for name, d in fed.site_dirs.items():
        ledger = Ledger.in_dir(d / "state")
        report = ledger.verify()
        assert report.ok, (name, report.problems)
        assert [e.seq for e in ledger.entries() if e.run_id == run_a] == [], name  # it never trained in run A
    obs.observed.append("every ledger verifies; none holds an entry of the stopped run")
