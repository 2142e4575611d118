"""A real deployment on 127.0.0.1 shared by the deployment tests: fl-server and three fl-client sites, TLS, node auth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fedhaven.shared.data import load_digits_data, save_idx
from fedhaven.shared.partition import partition_iid

BIN = Path(sys.executable).parent
SITES = ("hospital-a", "hospital-b", "hospital-c")
RUN_TOML = """
rounds = 2
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

    sites = SITES
    cli = staticmethod(cli)
    free_port = staticmethod(free_port)

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
max_epsilon = 50.0
min_noise_multiplier = 0.5
""")
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


    def run(self, *, retries: int = 1, dp_extra: str = "", target: float = 6.0,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """`fl-server run` of a 2-round DP + SecAgg+ digits run, as the operator.

        `target` is each site's epsilon after the run, counting what it spent before (sites hold 50).
        """
        path = self.root / f"run-{time.monotonic_ns()}.toml"
        path.write_text(RUN_TOML.format(retries=retries, dp_extra=dp_extra, target=target))
        return cli("fl-server", "run", str(path), "--state-dir", str(self.state), timeout=timeout)


    @staticmethod
    def run_dir_of(res: subprocess.CompletedProcess) -> Path:
        """The run directory `fl-server run` named in its output."""
        for line in (res.stdout + res.stderr).splitlines():
            if "submitted; results in " in line:
                return Path(line.rsplit("results in ", 1)[1].strip())
        raise AssertionError(f"fl-server run named no run directory:\n{res.stdout}{res.stderr}")


@pytest.fixture
def deploy_cli():
    """Run an installed fedhaven command with the hardened environment."""
    return cli


@pytest.fixture(scope="session")
def federation():
    # Not under pytest's 0700 tmp root: the tests show that the coordinator's OWN permissions keep other
    # local accounts out, so every folder above the state directory must be open to them.
    root = Path(tempfile.mkdtemp(prefix="fedhaven-deploy-"))
    root.chmod(0o755)
    fed = Federation(root)
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
