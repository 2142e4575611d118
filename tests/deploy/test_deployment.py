"""A real deployment on 127.0.0.1: fl-server + three fl-client sites as separate processes, TLS, node auth."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedhaven.client.ledger import Ledger
from fedhaven.shared.crypto import make_ca
from fedhaven.shared.data import load_digits_data, save_idx
from fedhaven.shared.partition import partition_iid

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SITES = ("hospital-a", "hospital-b", "hospital-c")
RUN_TOML = """
rounds = {rounds}
min_sites = 3
round_retries = {retries}
[data]
source = "digits"
[train]
local_epochs = 3.0
batch_size = 64
lr = 0.2
[dp]
target_epsilon = {target}
{dp_extra}
[secagg]
num_shares = 3
reconstruction_threshold = 2
max_weight = 1000
timeout = 120.0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    return out


def cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          env=env(), cwd=cwd)


class Federation:
    """One coordinator and its sites, each a process started here and stopped by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "coordinator"
        self.front = free_port()
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT, env=env(),
                                cwd=self.root)
        self.procs.append(proc)
        return proc

    def site_dir(self, name: str, *, register: bool, port: int, data_index: np.ndarray | None = None) -> Path:
        site = self.root / name
        site.mkdir()
        assert cli("fl-client", "keygen", "--out", str(site)).returncode == 0
        digits = load_digits_data(split="train")
        save_idx(digits.subset(data_index if data_index is not None else np.arange(300)), site / "data",
                 split="train")
        if register:
            res = cli("fl-server", "site", "add", name, "--public-key", str(site / "site.pub"), "--state-dir",
                      str(self.state))
            assert res.returncode == 0, res.stderr
            (site / "ca.pem").write_bytes((self.state / "sites" / name / "ca.pem").read_bytes())
        else:
            (site / "ca.pem").write_bytes((self.state / "pki" / "ca.pem").read_bytes())
        (site / "site.toml").write_text(f"""
name = "{name}"
clientappio_port = {port}
[coordinator]
address = "localhost:{self.front}"
ca_cert = "ca.pem"
[data]
source = "idx"
path = "data"
[policy]
max_epsilon = 10.0
min_noise_multiplier = 0.5
""")
        res = cli("fl-client", "ledger", "init", "--config", str(site / "site.toml"))  # a new site, explicitly
        assert res.returncode == 0, res.stderr
        return site

    def wait_online(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = cli("fl-server", "status", "--state-dir", str(self.state))
            if res.stdout.count(" online") + res.stderr.count(" online") >= n:
                return
            time.sleep(2)
        raise AssertionError(f"sites did not come online:\n{res.stdout}{res.stderr}")

    def stop(self) -> None:
        for proc in self.procs[1:]:  # sites first, all at once, then the coordinator
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        cli("fl-server", "stop", "--state-dir", str(self.state), timeout=90)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("deploy"))
    res = cli("fl-server", "init", "--state-dir", str(fed.state), "--name", "localhost", "--listen",
              f"127.0.0.1:{fed.front}", "--superlink-port", str(free_port()))
    assert res.returncode == 0, res.stderr
    parts = partition_iid(num_examples=len(load_digits_data(split="train")), num_sites=3, seed=0)
    dirs = [fed.site_dir(name, register=True, port=free_port(), data_index=idx) for name, idx in zip(SITES, parts)]
    fed.spawn("coordinator", "fl-server", "start", "--state-dir", str(fed.state))
    deadline = time.monotonic() + 90
    while not (fed.state / "coordinator.json").exists():
        assert time.monotonic() < deadline, (fed.root / "coordinator.log").read_text()
        assert fed.procs[0].poll() is None, (fed.root / "coordinator.log").read_text()
        time.sleep(0.5)
    for name, d in zip(SITES, dirs):
        fed.spawn(name, "fl-client", "start", "--config", str(d / "site.toml"))
    fed.wait_online(3)
    fed.site_dirs = dirs
    yield fed
    fed.stop()


def _run(fed: Federation, *, retries: int = 1, dp_extra: str = "", target: float = 6.0, rounds: int = 2,
         timeout: float = 600):
    path = fed.root / f"run-{time.monotonic_ns()}.toml"
    path.write_text(RUN_TOML.format(retries=retries, dp_extra=dp_extra, target=target, rounds=rounds))
    return cli("fl-server", "run", str(path), "--state-dir", str(fed.state), timeout=timeout)


def _newest_run(fed: Federation) -> Path:
    return max((fed.state / "runs").glob("run-*"), key=lambda p: p.stat().st_mtime)


def test_two_rounds_of_dp_secagg_training_over_tls(federation):
    res = _run(federation)
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = _newest_run(federation)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["initial", "ok", "ok"]
    assert lines[2]["loss"] < lines[0]["loss"] and lines[2]["accuracy"] > lines[0]["accuracy"] + 0.1
    assert all(x["secure_aggregation"] and x["sites_ok"] == 3 for x in lines[1:])
    privacy = json.loads((run_dir / "privacy.json").read_text())
    assert set(privacy["sites"]) == set(SITES)
    for name, d in zip(SITES, federation.site_dirs):
        eps = privacy["sites"][name]["epsilon"]
        assert 0 < eps <= 6.0
        ledger = Ledger.in_dir(d / "state")
        assert ledger.verify().ok and [e.kind for e in ledger.entries()] == ["init", "update", "update"]
        assert ledger.entries()[-1].epsilon_after == pytest.approx(eps)  # the site's record matches the report
    witnesses = json.loads((federation.state / "runs" / "ledger-witnesses.json").read_text())["sites"]
    assert set(witnesses) == set(SITES) and all(w["seq"] == 2 for w in witnesses.values())
    assert (run_dir / "model.pt").exists() and (run_dir / "checkpoints" / "round-002.pt").exists()
    assert "Privacy report" in res.stdout + res.stderr


def test_policy_violation_is_refused_and_nothing_is_trained(federation):
    before = [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs]
    res = _run(federation, retries=0, dp_extra="noise_multiplier = 0.1")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "below this site's minimum 0.5" in out and "FAILED" in out
    after = [len(Ledger.in_dir(d / "state").entries()) for d in federation.site_dirs]
    assert after == before


def test_a_run_every_site_refuses_fails_and_names_the_runs_target(federation):
    """Sites spent ~6 of their own 10; a run targeting 1 trains nothing: exit 1, and the reason is the run's."""
    res = _run(federation, retries=0, target=1.0)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "run's privacy target is reached" in out and "dp.target_epsilon = 1" in out
    assert "no round produced an aggregate" in out and "finished: completed" not in out


def test_a_deleted_ledger_stops_the_site_until_its_operator_acts(federation):
    site = federation.site_dirs[0]
    ledger = Ledger.in_dir(site / "state")
    aside = site / "ledger-backup.jsonl"
    ledger.path.rename(aside)
    try:
        res = cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml"))
        assert res.returncode == 1 and "is missing, but its anchor" in res.stderr
        res = cli("fl-client", "check", "--config", str(site / "site.toml"))
        assert res.returncode == 2 and "is missing, but its anchor" in res.stderr
        res = _run(federation, retries=0, target=8.0, rounds=1)
        out = res.stdout + res.stderr
        assert "hospital-a refuses to train until its operator acts" in out and "is missing" in out, out
        assert not ledger.path.exists()  # nothing was trained or recorded: no fresh ledger appeared
    finally:
        aside.rename(ledger.path)
    assert cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml")).returncode == 0


def test_a_rolled_back_ledger_and_anchor_are_caught_by_the_coordinators_witness(federation, tmp_path):
    """A full restore of an older backup (ledger and anchor) verifies locally; the coordinator's witness does not."""
    site = federation.site_dirs[1]
    ledger = Ledger.in_dir(site / "state")
    shutil.copy(ledger.path, tmp_path / "ledger")
    shutil.copy(ledger.anchor_path, tmp_path / "anchor")
    res = _run(federation, retries=0, target=9.0, rounds=1)
    assert res.returncode == 0, res.stdout + res.stderr
    shutil.copy(tmp_path / "ledger", ledger.path)
    shutil.copy(tmp_path / "anchor", ledger.anchor_path)
    assert cli("fl-client", "ledger", "verify", "--config", str(site / "site.toml")).returncode == 0
    res = _run(federation, retries=0, target=9.5, rounds=1)
    out = res.stdout + res.stderr
    assert "hospital-b refuses to train until its operator acts" in out and "does not contain it" in out, out
    assert len(ledger.entries()) == len(Ledger(tmp_path / "ledger", anchor=tmp_path / "anchor").entries())


def test_unregistered_site_is_not_admitted(federation):
    site = federation.site_dir("intruder", register=False, port=free_port())
    res = cli("fl-client", "start", "--config", str(site / "site.toml"), timeout=120)
    assert res.returncode == 1
    assert "does not accept this site's key" in res.stderr, res.stdout + res.stderr
    assert [e.kind for e in Ledger.in_dir(site / "state").entries()] == ["init"]


def test_site_trusting_another_ca_is_stopped_before_connecting(federation, tmp_path):
    site = federation.site_dirs[0]
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_ca(common_name="someone else").cert_pem)
    text = (site / "site.toml").read_text().replace('ca_cert = "ca.pem"', f'ca_cert = "{other}"')
    (tmp_path / "site.toml").write_text(text.replace('path = "data"', f'path = "{site / "data"}"'))
    (tmp_path / "site.key").write_bytes((site / "site.key").read_bytes())
    os.chmod(tmp_path / "site.key", 0o600)
    assert cli("fl-client", "ledger", "init", "--config", str(tmp_path / "site.toml")).returncode == 0
    res = cli("fl-client", "start", "--config", str(tmp_path / "site.toml"), timeout=60)
    assert res.returncode == 1
    assert "is not who the site's CA says it is" in res.stderr


def test_site_credentials_cannot_submit_or_stop_runs(federation):
    ca = str(federation.site_dirs[0] / "ca.pem")
    base = f"https://localhost:{federation.front}"
    with httpx.Client(verify=ca) as client:
        for path in ("/v1/control/start-run", "/v1/control/stop-run", "/v1/control/list-runs",
                     "/v1/runtime/pull-messages", "/health"):
            r = client.post(base + path, content=b"")
            assert r.status_code == 403 and b"only use Flower's Fleet API" in r.content, path
        r = client.post(base + "/v1/fleet/../control/stop-run", content=b"")
        assert r.status_code in (403, 404)
    # Flower's own Control client, given a site's CA and the address sites know, is refused too
    from fedhaven.server.flower_control import Control, ControlError

    with pytest.raises(ControlError, match="403"):
        control = Control(address=f"localhost:{federation.front}", ca_cert=Path(ca),
                          flwr_home=federation.root / "site-flwr-home")
        control.runs()
    runtime = json.loads((federation.state / "coordinator.json").read_text())
    assert runtime["control_address"].startswith("127.0.0.1:")  # Control and Runtime only on loopback


def test_plain_http_needs_an_explicit_insecure(tmp_path):
    state = tmp_path / "coord"
    state.mkdir()
    (state / "server.toml").write_text('[coordinator]\nlisten = "127.0.0.1:1"\n')
    res = cli("fl-server", "start", "--state-dir", str(state))
    assert res.returncode == 1 and "no TLS certificates" in res.stderr and "--insecure" in res.stderr
    (tmp_path / "site.toml").write_text('name = "a"\n[coordinator]\naddress = "localhost:9092"\n')
    res = cli("fl-client", "start", "--config", str(tmp_path / "site.toml"))
    assert res.returncode == 2 and "ca_cert" in res.stderr and "insecure = true" in res.stderr
