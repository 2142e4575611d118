"""fedhaven deployed on loopback exactly as an operator and three sites deploy it (the recipe of tests/deploy).

`fl-server init` (CA and TLS certificate), `fl-client keygen` per site, `fl-server site add --public-key`,
site.toml per site, `fl-server start`, `fl-client start` per site (Flower's SuperNode in process
isolation plus fedhaven's long-lived site executor), then `fl-server run run.toml` per variant. The
commands are the installed ones (the venv of this interpreter).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from fedhaven.sim.bench.deploy_flower import RunTrace, collect
from fedhaven.sim.bench.deploy_procs import BIN, MessageWatcher, Proc, child_env, free_port

SITE_NAMES = ("hospital-a", "hospital-b", "hospital-c", "hospital-d", "hospital-e")


def run_toml(*, rounds: int, sites: int, epochs: float, batch_size: int, lr: float, dp: bool, secagg: bool,
             target_epsilon: float, secagg_cfg: dict[str, Any]) -> str:
    """The run file of one variant; DP and SecAgg+ otherwise at fedhaven's defaults."""
    sa = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in secagg_cfg.items())
    return (f"rounds = {rounds}\nmin_sites = {sites}\nround_retries = 0\n[data]\nsource = \"digits\"\n"
            f"[train]\nlocal_epochs = {float(epochs)}\nbatch_size = {batch_size}\nlr = {lr}\n"
            f"[dp]\nenabled = {str(dp).lower()}\ntarget_epsilon = {float(target_epsilon)}\n"
            f"[secagg]\nenabled = {str(secagg).lower()}\n{sa}\n")


class FedhavenDeployment:
    """A coordinator and one site per data folder, each started with fedhaven's own commands."""

    def __init__(self, *, root: Path, data_dirs: list[Path]) -> None:
        self.root = root
        self.state = root / "coordinator"
        self.data_dirs = data_dirs
        self.front = free_port()
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.coordinator: Proc | None = None
        self.sites: dict[str, Proc] = {}
        self.watcher: MessageWatcher | None = None
        self.env = child_env()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                             env=self.env, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res

    def _site(self, name: str, data: Path) -> Path:
        site = self.root / name
        site.mkdir()
        self.cli("fl-client", "keygen", "--out", str(site))
        self.cli("fl-server", "site", "add", name, "--public-key", str(site / "site.pub"), "--state-dir",
                 str(self.state))
        (site / "ca.pem").write_bytes((self.state / "sites" / name / "ca.pem").read_bytes())
        # The policy lets every variant run, including the one without DP and SecAgg+ compared with plain Flower.
        (site / "site.toml").write_text(f"""name = "{name}"
clientappio_port = {free_port()}
[coordinator]
address = "localhost:{self.front}"
ca_cert = "ca.pem"
[data]
source = "idx"
path = "{data}"
[policy]
max_epsilon = 1000.0
min_noise_multiplier = 0.0
require_dp = false
require_secure_aggregation = false
""")
        return site

    def start(self, *, timeout: float = 180) -> None:
        self.cli("fl-server", "init", "--state-dir", str(self.state), "--name", "localhost", "--listen",
                 f"127.0.0.1:{self.front}", "--superlink-port", str(free_port()))
        dirs = [self._site(name, data) for name, data in zip(SITE_NAMES, self.data_dirs, strict=False)]
        self.watcher = MessageWatcher(self.state / "superlink.db").__enter__()
        self.coordinator = Proc("fl-server-start", [str(BIN / "fl-server"), "start", "--state-dir", str(self.state)],
                                env=self.env, cwd=self.root, log_dir=self.logs)
        deadline = time.monotonic() + timeout
        while not (self.state / "coordinator.json").exists():
            if not self.coordinator.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the coordinator did not start; see {self.coordinator.log_path}")
            time.sleep(0.5)
        for d in dirs:
            self.sites[d.name] = Proc(f"fl-client-{d.name}", [str(BIN / "fl-client"), "start", "--config",
                                                               str(d / "site.toml")],
                                      env=self.env, cwd=d, log_dir=self.logs)
        while True:
            res = subprocess.run([str(BIN / "fl-server"), "status", "--state-dir", str(self.state)],
                                 capture_output=True, text=True, timeout=120, env=self.env)
            if (res.stdout + res.stderr).count(" online") >= len(dirs):
                return
            dead = [p.name for p in [self.coordinator, *self.sites.values()] if not p.alive()]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"fedhaven sites did not come online ({dead or 'timeout'}); see {self.logs}")
            time.sleep(1)

    def run(self, *, name: str, toml: str, timeout: float) -> RunTrace:
        """`fl-server run` one variant, as the operator; its metrics.jsonl is read back."""
        path = self.root / f"run-{name}.toml"
        path.write_text(toml)
        submitted = time.time()
        res = subprocess.run([str(BIN / "fl-server"), "run", str(path), "--state-dir", str(self.state)],
                             capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.root)
        finished = time.time()
        out = res.stdout + res.stderr
        (self.logs / f"fl-server-run-{name}.log").write_text(out)
        m = re.search(r"submitted; results in (\S*run-(\d+))", out)
        if m is None:
            raise RuntimeError(f"fl-server run {name} named no run ({res.returncode}):\n{out[-3000:]}")
        metrics = Path(m[1]) / "metrics.jsonl"
        records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
        assert self.watcher is not None
        return collect(watcher=self.watcher, run_id=int(m[2]), nodes=self.sites, submitted=submitted,
                       finished=finished, status="completed" if res.returncode == 0 else f"failed ({res.returncode})",
                       details="" if res.returncode == 0 else out[-2000:], records=records)

    def stop(self) -> None:
        for proc in self.sites.values():  # sites first, then the coordinator (it stops what it started)
            proc.stop()
        if self.coordinator is not None:
            self.coordinator.stop(timeout=60)
        if self.watcher is not None:
            self.watcher.__exit__()
