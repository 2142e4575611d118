"""A site is named by the key it authenticates with: one that reports another site's name is refused, and the report
lists every site that trained by its registered name (real fl-server and fl-client processes)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.sim.loopback import LoopbackFederation, run_toml

pytestmark = [pytest.mark.slow, pytest.mark.trust]


def test_a_site_reporting_another_sites_name_is_refused_and_listed_by_its_own(federation):
    """Issue #22 finding 3: hospital-d (its own key) says it is hospital-a. Before, the report listed hospital-a
    where hospital-d had trained, and hospital-a's witness pointed at hospital-d's node."""
    a = federation.sites[0]
    d = federation.site_dir("hospital-d", register=True)
    toml = d / "site.toml"
    toml.write_text(toml.read_text().replace('name = "hospital-d"', f'name = "{a}"'))
    shutil.rmtree(d / "state")
    Ledger.in_dir(d / "state").anchor_path.unlink()
    assert federation.cli("fl-client", "ledger", "init", "--config", str(toml)).returncode == 0
    # the consortium's roster would stop hospital-d already at SecAgg+'s share-keys (its keys are not signed by
    # hospital-a's key): without rosters, the coordinator's own check is what stands
    pinned = {n: (federation.site_dirs[n] / "site.toml").read_text() for n in federation.sites}
    for n, text in pinned.items():
        (federation.site_dirs[n] / "site.toml").write_text(text.replace('roster = "roster.toml"\n', ""))
    witnesses = federation.state / "runs" / "ledger-witnesses.json"
    before = json.loads(witnesses.read_text())["sites"][a] if witnesses.exists() else None
    proc = federation.spawn("hospital-d", "fl-client", "start", "--config", str(toml))
    try:
        federation.wait_online(len(federation.sites) + 1)
        # five shares: every site's neighbourhood is all four nodes, so three remain when hospital-d is refused (a
        # site counts only the active sites it shares with against its policy.min_sites)
        text = run_toml(rounds=1, retries=0, target=_spent(federation) + 1.0, num_shares=5, threshold=3)
        res = LoopbackFederation.run(federation, text)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        for n, text in pinned.items():
            (federation.site_dirs[n] / "site.toml").write_text(text)
        federation.cli("fl-server", "site", "revoke", "hospital-d", "--state-dir", str(federation.state))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert re.search(rf"site hospital-d \(node \d+\) reported the name '{a}': its update was refused", out), out
    run_dir = federation.run_dir_of(res)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    # every site that trained is in the report under its registered name; hospital-d's spending is bounded
    assert set(privacy["sites"]) == {*federation.sites, "hospital-d"}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["status"] == "ok" and lines[-1]["sites_ok"] == len(federation.sites)
    # hospital-a's witness is still hospital-a's own node and entry
    after = json.loads(witnesses.read_text())["sites"][a]
    assert after["node_id"] == (before or after)["node_id"]
    assert after["seq"] == len(Ledger.in_dir(federation.site_dirs[a] / "state").entries()) - 1
    assert "hospital-d" not in json.loads(witnesses.read_text())["sites"]  # its reply never counted as a witness


def _spent(federation) -> float:
    from fedhaven.shared.accounting import epsilon

    return max(epsilon(history=Ledger.in_dir(d / "state").history(), delta=1e-5) for d in federation.site_dirs_list)
