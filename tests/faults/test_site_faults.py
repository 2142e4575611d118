"""Faults at the sites and at the coordinator's supervisor: a run completes or fails loudly, and nothing is lost."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.shared.process import pid_alive
from fedhaven.sim.loopback import LoopbackFederation, cli, run_toml

pytestmark = pytest.mark.slow
TIMEOUT = 30  # SecAgg+ stage timeout of these runs: a silent site costs at most this per stage


def fault_run(**kw: object) -> str:
    """Two rounds that can go on with two of the three sites, each stage bounded by TIMEOUT seconds."""
    return run_toml(**{"rounds": 2, "min_sites": 2, "retries": 1, "timeout": TIMEOUT, "target": 8.0, **kw})


def rounds_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def finish(fed: LoopbackFederation, proc, *, timeout: float = 600) -> tuple[int, str, Path]:
    code = proc.wait(timeout=timeout)
    out = fed.log("operator")
    return code, out, fed.run_dir_of(out)


def ledgers_verify(fed: LoopbackFederation) -> None:
    for name, d in fed.site_dirs.items():
        report = Ledger.in_dir(d / "state").verify()
        assert report.ok, (name, report.problems)


@pytest.mark.fault_smoke
def test_killing_only_fl_server_start_takes_its_parts_with_it(fed, observe):
    obs = observe("`fl-server start` SIGKILLed while sites are idle",
                  "SuperLink and executor stop with it; status says not running; the same command starts "
                  "again; sites reconnect by themselves; a run trains")
    rt = fed.runtime()
    parts = [rt["superlink_pid"], rt["superexec_pid"]]
    t0 = time.monotonic()
    fed.kill("coordinator", signal.SIGKILL)
    while any(pid_alive(p) for p in parts) and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in parts), "the coordinator's parts outlived it"
    obs.observed.append(f"both parts gone {time.monotonic() - t0:.1f} s after the kill")
    status = fed.status()
    assert status.returncode == 3 and "not running" in status.stdout + status.stderr, status
    obs.observed.append("status: not running")
    t1 = time.monotonic()
    fed.start_coordinator()
    fed.wait_online(3, timeout=120)
    obs.observed.append(f"restarted; 3 sites back online after {time.monotonic() - t1:.0f} s")
    res = fed.run(fault_run(rounds=1))
    assert res.returncode == 0, res.stdout + res.stderr
    obs.observed.append("a 1-round run then completed")


def test_coordinator_restarted_while_sites_idle(fed, observe):
    obs = observe("coordinator stopped and started again while sites idle",
                  "sites reconnect by themselves and the next run trains with all of them")
    assert cli("fl-server", "stop", "--state-dir", str(fed.state), env=fed.env).returncode == 0
    fed.procs["coordinator"].wait(timeout=60)
    t0 = time.monotonic()
    fed.start_coordinator()
    fed.wait_online(3, timeout=120)
    obs.observed.append(f"3 sites online {time.monotonic() - t0:.0f} s after the restart")
    res = fed.run(fault_run(rounds=1))
    assert res.returncode == 0, res.stdout + res.stderr
    last = rounds_of(fed.run_dir_of(res.stdout + res.stderr))[-1]
    assert last["status"] == "ok" and last["sites_ok"] == 3
    obs.observed.append("next run: round ok with 3/3 sites")


#: When to cut hospital-c's power, by what its SuperNode has done in round 1: (log line, times seen).
STAGES = {
    "setup": ("Receiving: train message", 1),
    "share keys": ("Sent successfully", 1),
    "collect masked vectors": ("Sent successfully", 2),
    "unmask": ("Sent successfully", 3),
}


@pytest.mark.parametrize("stage", list(STAGES), ids=lambda s: s.replace(" ", "-"))  # `make faults` only: 2 min each
def test_a_site_killed_at_each_secagg_stage_costs_at_most_a_retried_round(fed, observe, stage):
    obs = observe(f"a site killed (SIGKILL, all its processes) at SecAgg+ stage '{stage}' of round 1",
                  "the run completes; round 1 costs at most one retried attempt; the other sites' ledgers verify")
    proc = fed.submit(fault_run())
    text, count = STAGES[stage]
    fed.wait_for_log("hospital-c", text, count=count, timeout=300)
    fed.signal_site("hospital-c", signal.SIGKILL)
    code, out, run_dir = finish(fed, proc)
    assert code == 0, out[-4000:]
    rounds = rounds_of(run_dir)
    failed = [r for r in rounds if r["status"] == "failed"]
    ok = [r for r in rounds if r["status"] == "ok"]
    assert len(ok) == 2 and len([r for r in failed if r["round"] == 1]) <= 1, rounds
    assert all(r["sites_ok"] + r["sites_failed"] <= 3 for r in rounds if r["status"] != "initial"), rounds
    obs.observed.append(f"completed; {len(failed)} failed attempt(s) in all, round 1 ok with "
                        f"{ok[0]['sites_ok']} sites; round 2 ok with {ok[1]['sites_ok']} sites")
    ledgers_verify(fed)
    obs.observed.append("every ledger verifies")


def test_a_frozen_site_cannot_hang_a_run(fed, observe):
    obs = observe("a site SIGSTOPped (all its processes) in round 1",
                  f"each stage waits at most the stage timeout ({TIMEOUT} s), the run completes without it")
    proc = fed.submit(fault_run())
    fed.wait_for_log("hospital-c", "Sent successfully", count=1, timeout=300)
    t0 = time.monotonic()
    fed.signal_site("hospital-c", signal.SIGSTOP)
    try:
        code, out, run_dir = finish(fed, proc, timeout=8 * TIMEOUT + 300)
    finally:
        fed.signal_site("hospital-c", signal.SIGCONT)
    took = time.monotonic() - t0
    assert code == 0, out[-4000:]
    ok = [r for r in rounds_of(run_dir) if r["status"] == "ok"]
    assert len(ok) == 2 and ok[0]["sites_ok"] == 2, ok
    obs.observed.append(f"completed {took:.0f} s after the freeze with 2/3 sites per round")


def test_a_site_restarted_mid_run(fed, observe):
    obs = observe("a site stopped and started again in the middle of round 1",
                  "the run completes; the site rejoins; its ledger verifies and records only what it sent")
    proc = fed.submit(fault_run())
    fed.wait_for_log("hospital-c", "Sent successfully", count=2, timeout=300)
    fed.kill("hospital-c", signal.SIGTERM)
    before = len(Ledger.in_dir(fed.site_dirs["hospital-c"] / "state").entries())
    fed.start_site("hospital-c")
    code, out, run_dir = finish(fed, proc)
    assert code == 0, out[-4000:]
    ok = [r for r in rounds_of(run_dir) if r["status"] == "ok"]
    assert len(ok) == 2, rounds_of(run_dir)
    ledgers_verify(fed)
    after = len(Ledger.in_dir(fed.site_dirs["hospital-c"] / "state").entries())
    obs.observed.append(f"completed; hospital-c's ledger {before} -> {after} entries, chain verified; "
                        f"round 2 with {ok[1]['sites_ok']} sites")
