"""A real deployment on 127.0.0.1: fl-server + three fl-client sites as separate processes, TLS, node auth."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.shared.accounting import epsilon
from fedhaven.shared.crypto import make_ca
from fedhaven.shared.recipe import expected_batch
from fedhaven.sim.loopback import LoopbackFederation, run_toml

pytestmark = pytest.mark.slow


def _site_size(site_dir: Path) -> int:
    from fedhaven.shared.sources import load_idx

    return len(load_idx(site_dir / "data", split="train").labels)


def _executor(site_dir: Path) -> dict:
    return json.loads((site_dir / "state" / "executor.json").read_text())


def test_two_rounds_of_dp_secagg_training_over_tls(federation):
    before = [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs_list]
    executors = [_executor(d) for d in federation.site_dirs_list]
    res = federation.run()
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = federation.run_dir_of(res)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["initial", "ok", "ok"]
    assert lines[2]["loss"] < lines[0]["loss"] and lines[2]["accuracy"] > lines[0]["accuracy"] + 0.1
    assert all(x["secure_aggregation"] and x["sites_ok"] == 3 for x in lines[1:])
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert set(privacy["sites"]) == set(federation.sites)
    # the default recipe: each site trained with the rule's batch for its own size (the sites differ in size)
    sizes = {name: _site_size(d) for name, d in
             zip(federation.sites, federation.site_dirs_list)}
    assert len(set(sizes.values())) == len(sizes)
    for name, size in sizes.items():
        assert privacy["sites"][name]["sample_rate"] == pytest.approx(expected_batch(site_size=size) / size)
    for name, d, n in zip(federation.sites, federation.site_dirs_list, before):
        eps = privacy["sites"][name]["epsilon"]
        assert 0 < eps <= 6.0
        ledger = Ledger.in_dir(d / "state")
        assert ledger.verify().ok and len(ledger.entries()) == n + 2 and ledger.entries()[0].kind == "init"
        assert ledger.entries()[-1].epsilon_after == pytest.approx(eps)  # the site's record matches the report
    witnesses = json.loads((federation.state / "runs" / "ledger-witnesses.json").read_text())["sites"]
    for name, d in zip(federation.sites, federation.site_dirs_list):  # what the coordinator saw of each ledger
        assert witnesses[name]["seq"] == len(Ledger.in_dir(d / "state").entries()) - 1
        assert witnesses[name]["hash"] == Ledger.in_dir(d / "state").entries()[-1].hash
        assert all(e.signature for e in Ledger.in_dir(d / "state").entries())  # signed with the site key
    assert (run_dir / "model.pt").exists() and (run_dir / "checkpoints" / "round-002.pt").exists()
    # one long-lived executor per site served every message of the run: 2 rounds x 4 SecAgg+ stages
    for d, was in zip(federation.site_dirs_list, executors):
        now = _executor(d)
        assert now["pid"] == was["pid"] and now["tasks"] >= was["tasks"] + 8 and now["failed"] == was["failed"]
    assert "Privacy report" in res.stdout + res.stderr


def test_policy_violation_is_refused_and_nothing_is_trained(federation):
    before = [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs_list]
    res = federation.run(retries=0, dp_extra="noise_multiplier = 0.1")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "below this site's minimum 0.5" in out and "FAILED" in out
    after = [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs_list]
    assert after == before


def _spent(federation) -> float:
    """The most any site has spent (epsilon at 1e-5), from the sites' own ledgers."""
    return max(epsilon(history=Ledger.in_dir(d / "state").history(), delta=1e-5) for d in federation.site_dirs_list)


def test_a_run_every_site_refuses_fails_and_names_the_runs_target(federation):
    """Sites spent several epsilon of their own 50; a run targeting 1 trains nothing: exit 1, the run's reason."""
    assert _spent(federation) > 1.0
    res = federation.run(retries=0, target=1.0)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "run's privacy target is reached" in out and "dp.target_epsilon = 1" in out
    assert "no round produced an aggregate" in out and "finished: completed" not in out


def test_a_deleted_ledger_stops_the_site_until_its_operator_acts(federation):
    site = federation.site_dirs_list[0]
    ledger = Ledger.in_dir(site / "state")
    aside = site / "ledger-backup.jsonl"
    ledger.path.rename(aside)
    try:
        res = federation.cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml"))
        assert res.returncode == 1 and "is missing, but its anchor" in res.stderr
        res = federation.cli("fl-client", "check", "--config", str(site / "site.toml"))
        assert res.returncode == 2 and "is missing, but its anchor" in res.stderr
        res = _run_rounds(federation, rounds=1, target=_spent(federation) + 0.5)
        out = res.stdout + res.stderr
        assert f"{federation.sites[0]} refuses to train until its operator acts" in out and "is missing" in out, out
        assert not ledger.path.exists()  # nothing was trained or recorded: no fresh ledger appeared
    finally:
        aside.rename(ledger.path)
    assert federation.cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml")).returncode == 0


def test_a_rolled_back_ledger_and_anchor_are_caught_by_the_coordinators_witness(federation, tmp_path, rewrite_newest):
    """A full restore of an older backup (ledger and anchor) verifies locally; the coordinator's witness does not."""
    site = federation.site_dirs_list[1]
    ledger = Ledger.in_dir(site / "state")
    shutil.copy(ledger.path, tmp_path / "ledger")
    shutil.copy(ledger.anchor_path, tmp_path / "anchor")
    res = _run_rounds(federation, rounds=1, target=_spent(federation) + 0.5)
    assert res.returncode == 0, res.stdout + res.stderr
    newest = ledger.path.read_bytes(), ledger.anchor_path.read_bytes()
    shutil.copy(tmp_path / "ledger", ledger.path)
    shutil.copy(tmp_path / "anchor", ledger.anchor_path)
    assert federation.cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml")).returncode == 0
    try:
        res = _run_rounds(federation, rounds=1, target=_spent(federation) + 0.5)
        out = res.stdout + res.stderr
        assert f"{federation.sites[1]} refuses to train until its operator acts" in out, out
        assert "does not contain it" in out
        assert len(ledger.entries()) == len(Ledger(tmp_path / "ledger", anchor=tmp_path / "anchor").entries())
    finally:  # the operator's first remedy: restore the newest ledger and anchor
        ledger.path.write_bytes(newest[0])
        ledger.anchor_path.write_bytes(newest[1])
    # issue #22 finding 4: the newest entry rewritten (noise -> 50, epsilon recomputed, re-hashed, anchor rewritten)
    witness = json.loads((federation.state / "runs" / "ledger-witnesses.json").read_text())["sites"]
    assert witness[federation.sites[1]]["hash"] == ledger.entries()[-1].hash  # the coordinator holds its hash
    rewrite_newest(ledger, noise=50.0)
    try:
        res = federation.cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml"))
        assert res.returncode == 1 and "its signature" in res.stdout + res.stderr, res.stdout + res.stderr
        res = _run_rounds(federation, rounds=1, target=_spent(federation) + 0.5)
        out = res.stdout + res.stderr
        assert f"{federation.sites[1]} refuses to train until its operator acts" in out, out
        assert "holds a different entry" in out
    finally:
        ledger.path.write_bytes(newest[0])
        ledger.anchor_path.write_bytes(newest[1])




def _run_rounds(federation, *, rounds: int, target: float):
    """`fl-server run` of `rounds` rounds without retries to `target` (the shorthand `run` always does 2)."""
    return LoopbackFederation.run(federation, run_toml(rounds=rounds, retries=0, target=target))


def test_unregistered_site_is_not_admitted(federation):
    site = federation.site_dir("intruder", register=False)
    res = federation.cli("fl-client", "start", "--config", str(site / "site.toml"), timeout=120)
    assert res.returncode == 1
    assert "does not accept this site's key" in res.stderr, res.stdout + res.stderr
    assert [e.kind for e in Ledger.in_dir(site / "state").entries()] == ["init"]  # nothing was trained


def test_site_trusting_another_ca_is_stopped_before_connecting(federation, tmp_path):
    site = federation.site_dirs_list[0]
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca(common_name="someone else").cert_pem)
    text = (site / "site.toml").read_text().replace('ca_cert = "ca.pem"', f'ca_cert = "{other}"')
    (tmp_path / "site.toml").write_text(text.replace('path = "data"', f'path = "{site / "data"}"'))
    (tmp_path / "site.key").write_bytes((site / "site.key").read_bytes())
    if (site / "roster.toml").exists():  # the pinned roster travels with the copied site.toml (a relative path)
        (tmp_path / "roster.toml").write_bytes((site / "roster.toml").read_bytes())
    os.chmod(tmp_path / "site.key", 0o600)
    assert federation.cli("fl-client", "ledger", "init", "--config", str(tmp_path / "site.toml")).returncode == 0
    res = federation.cli("fl-client", "start", "--config", str(tmp_path / "site.toml"), timeout=60)
    assert res.returncode == 1
    assert "is not who the site's CA says it is" in res.stderr


def test_site_credentials_cannot_submit_or_stop_runs(federation):
    ca = str(federation.site_dirs_list[0] / "ca.pem")
    base = f"https://localhost:{federation.front}"
    with httpx.Client(verify=ca) as client:
        for path in ("/v1/control/start-run", "/v1/control/stop-run", "/v1/control/list-runs",
                     "/v1/runtime/pull-messages", "/health"):
            r = client.post(base + path, content=b"")
            assert r.status_code == 403 and b"only Flower's Fleet API" in r.content, path
        r = client.post(base + "/v1/fleet/../control/stop-run", content=b"")
        assert r.status_code in (403, 404)
    # Flower's own Control client, given a site's CA and the address sites know, is refused too
    from fedhaven.server.seam.control import Control, ControlError

    with pytest.raises(ControlError, match="403"):
        control = Control(address=f"localhost:{federation.front}", ca_cert=Path(ca),
                          flwr_home=federation.root / "site-flwr-home")
        control.runs()
    runtime = json.loads((federation.state / "coordinator.json").read_text())
    assert runtime["control_address"].startswith("unix:")  # Control only on the operator's socket


def test_plain_http_needs_an_explicit_insecure(tmp_path, deploy_cli):
    state = tmp_path / "coord"
    state.mkdir()
    (state / "server.toml").write_text('[coordinator]\nlisten = "127.0.0.1:1"\n')
    res = deploy_cli("fl-server", "start", "--state-dir", str(state))
    assert res.returncode == 1 and "no TLS certificates" in res.stderr and "--insecure" in res.stderr
    (tmp_path / "site.toml").write_text('name = "a"\n[coordinator]\naddress = "localhost:9092"\n')
    res = deploy_cli("fl-client", "start", "--config", str(tmp_path / "site.toml"))
    assert res.returncode == 2 and "ca_cert" in res.stderr and "insecure = true" in res.stderr
