"""A real deployment on 127.0.0.1: `fl-server` and N `fl-client` sites as processes, for tests, faults and benchmarks.

Everything goes through the installed commands exactly as an operator and a
site's IT would type them (keys by `fl-client keygen`, sites added by public
key, TLS, SuperNode authentication). Each site holds an IID part of
scikit-learn's digits as MNIST-format files. Every process started here is
stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedhaven.shared.files import read_json_object
from fedhaven.shared.process import pid_alive
from fedhaven.shared.runtime import HARDENED_ENV

BIN = Path(sys.executable).parent
DEFAULT_SITES = ("hospital-a", "hospital-b", "hospital-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every command started here: hardened, no PYTHONPATH leaking in."""
    out = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out.update(HARDENED_ENV)
    out.update(extra or {})
    return out


def cli(*args: str, timeout: float = 120, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an installed fedhaven command (`fl-server ...`, `fl-client ...`) to completion."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          env=command_env(env), cwd=cwd)


def unequal_parts(*, num_examples: int, num_sites: int, seed: int = 0) -> list[np.ndarray]:
    """A shuffled split in which site i holds a share proportional to 1 - 0.2 i (at least 0.2): hospitals differ in
    size, so each site's own batch (the rule's) differs too."""
    order = np.random.default_rng(seed).permutation(num_examples)
    weights = np.array([max(0.2, 1 - 0.2 * i) for i in range(num_sites)])
    cuts = np.round(np.cumsum(weights / weights.sum())[:-1] * num_examples).astype(int)
    return np.split(order, cuts)


#: The default model and recipe (each site derives its own batch from its size).
DEFAULT_TRAINING = '[train]\nrecipe = "auto"'
#: The seed's LeNet with fixed settings: what the plain Flower apps of the deployment benchmark train too.
LENET_TRAINING = '[model]\nname = "lenet"\n[train]\nlocal_epochs = 3.0\nbatch_size = 64\nlr = 0.2'


def run_toml(*, rounds: int = 2, min_sites: int = 3, retries: int = 1, target: float = 6.0, timeout: float = 120.0,
             num_shares: int = 3, threshold: int = 2, secagg: bool = True, dp: bool = True, extra: str = "",
             training: str = DEFAULT_TRAINING) -> str:
    """A run config for the digits sites: `training` (model and train tables; the default model and recipe unless
    told), `rounds` of DP-SGD (to `target` epsilon, counting prior spending)."""
    return f"""
rounds = {rounds}
min_sites = {min_sites}
round_retries = {retries}
[data]
source = "digits"
{training}
[dp]
enabled = {str(dp).lower()}
target_epsilon = {target}
[secagg]
enabled = {str(secagg).lower()}
num_shares = {num_shares}
reconstruction_threshold = {threshold}
max_weight = 1000
timeout = {timeout}
{extra}
"""


@dataclass
class LoopbackFederation:
    """One coordinator and its sites under `root`; `start()` brings them up, `stop()` takes everything down."""

    root: Path
    site_names: Sequence[str] = DEFAULT_SITES
    policy: str = "max_epsilon = 50.0\nmin_noise_multiplier = 0.5"
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    site_dirs: dict[str, Path] = field(default_factory=dict)
    port_restarts: dict[str, int] = field(default_factory=dict)  # sites started again because their port was taken
    #: each site's `cpu_threads`; None: its share of this machine's cores, as on a host that runs several sites
    cpu_threads: int | None = None
    #: whether the provisioned sites pin a consortium roster of one another (SecAgg+ neighbours must be on it)
    roster: bool = True

    def __post_init__(self) -> None:
        self.state = self.root / "coordinator"
        self._registry = threading.Lock()
        if self.cpu_threads is None:
            self.cpu_threads = max(1, (os.cpu_count() or 1) // len(self.site_names))
        self.front = free_port()
        self.runtime_port = free_port()
        self.operator_port = free_port()  # the operator console, /metrics and probes (`--operator-listen`)

    @classmethod
    def in_temp(cls, *, prefix: str = "fedhaven-loopback-", **kwargs: Any) -> LoopbackFederation:
        """A federation in a fresh folder under /tmp that other local accounts may traverse (0755), so that only
        the coordinator's own permissions keep them out."""
        root = Path(tempfile.mkdtemp(prefix=prefix))
        root.chmod(0o755)
        return cls(root=root, **kwargs)

    # ----- set-up -----
    def provision(self) -> None:
        """`fl-server init`, then for every site: keygen, data, `fl-server site add --public-key`, site.toml."""
        from fedhaven.shared.sources import load_digits_data

        res = cli("fl-server", "init", "--state-dir", str(self.state), "--name", "localhost", "--listen",
                  f"127.0.0.1:{self.front}", "--superlink-port", str(self.runtime_port))
        _check(res, "fl-server init")
        parts = unequal_parts(num_examples=len(load_digits_data(split="train")), num_sites=len(self.site_names))
        # sites are independent (keys, data, ledger): provisioned side by side, as separate hospitals would be
        with ThreadPoolExecutor(max_workers=min(4, len(self.site_names))) as pool:
            dirs = list(pool.map(lambda item: self.add_site_dir(item[0], register=True, data_index=item[1]),
                                 zip(self.site_names, parts, strict=True)))
        self.site_dirs.update(zip(self.site_names, dirs, strict=True))
        if self.roster:
            self.pin_roster(self.site_names)

    def pin_roster(self, names: Sequence[str]) -> None:
        """Each of `names` pins the roster of `names` (their key fingerprints), as a consortium agrees it out of
        band: `roster.toml` beside its site.toml, named there."""
        from fedhaven.shared.crypto import fingerprint

        lines = "".join(f'"{n}" = "{fingerprint((self.site_dirs[n] / "site.pub").read_bytes())}"\n' for n in names)
        for n in names:
            site = self.site_dirs[n]
            (site / "roster.toml").write_text(f"[sites]\n{lines}")
            text = (site / "site.toml").read_text()
            if 'roster = "roster.toml"' not in text:
                pinned = text.replace(f'name = "{n}"\n', f'name = "{n}"\nroster = "roster.toml"\n', 1)
                (site / "site.toml").write_text(pinned)

    def add_site_dir(self, name: str, *, register: bool, data_index: Sequence[int] | None = None) -> Path:
        """A site's folder: its key pair, its digits part as IDX files, the CA certificate and site.toml."""
        import numpy as np

        from fedhaven.shared.sources import load_digits_data, save_idx

        site = self.root / name
        site.mkdir()
        _check(cli("fl-client", "keygen", "--out", str(site)), "fl-client keygen")
        digits = load_digits_data(split="train")
        save_idx(digits.subset(np.asarray(data_index if data_index is not None else np.arange(300))),
                 site / "data", split="train")
        if register:
            with self._registry:  # one `fl-server site add` at a time: each rewrites the coordinator's registry
                _check(cli("fl-server", "site", "add", name, "--public-key", str(site / "site.pub"), "--state-dir",
                           str(self.state)), "fl-server site add")
            (site / "ca.pem").write_bytes((self.state / "sites" / name / "ca.pem").read_bytes())
        else:
            (site / "ca.pem").write_bytes((self.state / "pki" / "ca.pem").read_bytes())
        (site / "site.toml").write_text(f"""
name = "{name}"
clientappio_port = {free_port()}
cpu_threads = {self.cpu_threads}
[coordinator]
address = "localhost:{self.front}"
ca_cert = "ca.pem"
[data]
source = "idx"
path = "data"
[policy]
{self.policy}
""")
        # a new site starts its privacy ledger explicitly; it refuses to train until then
        _check(cli("fl-client", "ledger", "init", "--config", str(site / "site.toml")), "fl-client ledger init")
        return site

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a long-running command (a fedhaven command by name, or any program by absolute path), its output
        appended to `root/<name>.log`; `stop()` ends it."""
        with (self.root / f"{name}.log").open("a") as log:
            proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                    env=command_env(self.env), cwd=self.root)
        self.procs[name] = proc
        return proc

    def start_coordinator(self, *, timeout: float = 90) -> None:
        """`fl-server start`; returns once this very process has written its coordinator.json."""
        proc = self.spawn("coordinator", "fl-server", "start", "--state-dir", str(self.state), "--operator-listen",
                          f"127.0.0.1:{self.operator_port}")
        deadline = time.monotonic() + timeout
        while (self.runtime() or {}).get("pid") != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the coordinator did not start:\n{self.log('coordinator')[-3000:]}")
            time.sleep(0.3)

    def start_site(self, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, "fl-client", "start", "--config", str(self.site_dirs[name] / "site.toml"))

    def start(self, *, online_timeout: float = 90) -> LoopbackFederation:
        """Provision (once), start the coordinator and every site, and wait until all sites are online and each
        site's executor is up."""
        if not self.state.exists():
            self.provision()
        self.start_coordinator()
        for name in self.site_names:
            self.start_site(name)
        self.wait_online(len(self.site_names), timeout=online_timeout)
        self.wait_executors(timeout=online_timeout)
        return self

    # ----- observing -----
    def runtime(self) -> dict[str, Any] | None:
        try:
            runtime: dict[str, Any] = json.loads((self.state / "coordinator.json").read_text())
            return runtime
        except (OSError, ValueError):
            return None

    def log(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text()
        except OSError:
            return ""

    def status(self) -> subprocess.CompletedProcess[str]:
        return cli("fl-server", "status", "--state-dir", str(self.state))

    def online(self) -> int:
        res = self.status()
        output: str = res.stdout + res.stderr
        return output.count(" online")

    def restart_if_port_taken(self) -> None:
        """Start again, on a new port, a site whose SuperNode found its loopback port taken: `free_port` picked it
        when the site was provisioned, and another process may have been given it since."""
        for name, site in self.site_dirs.items():
            proc = self.procs.get(name)
            if proc is None or proc.poll() is None:  # running: nothing to read
                continue
            taken = self.log(name).count("address already in use")
            if taken <= self.port_restarts.get(name, 0):
                continue
            self.port_restarts[name] = taken
            toml = site / "site.toml"
            toml.write_text(re.sub(r"(?m)^clientappio_port = \d+$", f"clientappio_port = {free_port()}",
                                   toml.read_text()))
            with (self.root / f"{name}.log").open("a") as log:
                log.write("(loopback: the site's port was taken; started again on another)\n")
            self.start_site(name)

    def wait_online(self, n: int, *, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.online() < n:
            self.restart_if_port_taken()
            if time.monotonic() > deadline:
                res = self.status()
                raise RuntimeError(f"{n} sites did not come online:\n{res.stdout}{res.stderr}")
            time.sleep(1)

    def wait_executors(self, *, timeout: float = 90) -> None:
        """Block until every site's executor has written its stats file (`executor.json`, from its constructor)
        with a live pid. A site counts as online once its SuperNode connects; its executor is a process of its own,
        which on a loaded machine may still be importing torch then."""
        deadline = time.monotonic() + timeout
        for name in self.site_names:
            path = self.site_dirs[name] / "state" / "executor.json"
            while not isinstance(pid := read_json_object(path).get("pid"), int) or not pid_alive(pid):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"site {name}'s executor did not start:\n{self.log(name)[-3000:]}")
                time.sleep(0.2)

    def wait_for_log(self, name: str, text: str, *, count: int = 1, timeout: float = 300) -> None:
        """Block until `text` appears `count` times in a process's log (e.g. a site's executor task lines)."""
        deadline = time.monotonic() + timeout
        while self.log(name).count(text) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} did not appear {count}x in {name}.log within {timeout:.0f} s")
            time.sleep(0.05)

    # ----- runs -----
    def write_run(self, text: str) -> Path:
        path = self.root / f"run-{time.monotonic_ns()}.toml"
        path.write_text(text)
        return path

    def run(self, text: str | None = None, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`fl-server run` of `text` (default: `run_toml()`), as the operator, to the end."""
        return cli("fl-server", "run", str(self.write_run(text or run_toml())), "--state-dir", str(self.state),
                   *args, timeout=timeout)

    def resume(self, run: str, *, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`fl-server run --resume RUN`, as the operator, to the end."""
        return cli("fl-server", "run", "--resume", run, "--state-dir", str(self.state), timeout=timeout)

    def submit(self, text: str | None = None, *args: str) -> subprocess.Popen[bytes]:
        """`fl-server run` in the background (output in `root/operator.log`)."""
        return self.spawn("operator", "fl-server", "run", str(self.write_run(text or run_toml())), "--state-dir",
                          str(self.state), *args)

    @staticmethod
    def run_dir_of(output: str) -> Path:
        """The run directory `fl-server run` named in its output."""
        for line in output.splitlines():
            if "submitted; results in " in line:
                return Path(line.rsplit("results in ", 1)[1].strip())
        raise RuntimeError(f"fl-server run named no run directory:\n{output[-3000:]}")

    # ----- faults and teardown -----
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one process started here (a site, the coordinator, the operator's command)."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=60)

    def site_pids(self, name: str) -> list[int]:
        """A running site's processes: `fl-client start`, its SuperNode and its executor."""
        rt = json.loads((self.site_dirs[name] / "state" / "site.json").read_text())
        return [int(rt["pid"]), *(int(v) for k, v in rt.items() if k != "pid")]

    def signal_site(self, name: str, sig: int) -> None:
        """Send `sig` to all of a site's processes at once (SIGSTOP freezes it, SIGKILL is a power cut)."""
        for pid in self.site_pids(name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            self.procs[name].wait(timeout=60)

    def restart_coordinator(self, *, latency: bool) -> None:
        """Stop the coordinator, set its latency switch in server.toml, start it again and wait for the sites."""
        import tomllib

        import tomli_w

        cli("fl-server", "stop", "--state-dir", str(self.state), timeout=90)
        proc = self.procs.get("coordinator")
        if proc is not None:
            proc.wait(timeout=60)
        toml = self.state / "server.toml"
        cfg = tomllib.loads(toml.read_text())
        cfg.setdefault("coordinator", {})["latency"] = latency
        toml.write_text(tomli_w.dumps(cfg))
        self.start_coordinator()
        self.wait_online(len(self.site_names))

    def stop(self) -> None:
        """Sites first, all at once, then the coordinator (`fl-server stop`), then anything left, by PID."""
        sites = [p for n, p in self.procs.items() if n in self.site_dirs]
        for proc in sites:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        cli("fl-server", "stop", "--state-dir", str(self.state), timeout=90)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _check(res: subprocess.CompletedProcess[str], what: str) -> None:
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
