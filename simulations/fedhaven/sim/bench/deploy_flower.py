"""Plain Flower 1.42 deployed on loopback as its documentation deploys it: TLS, SuperNode authentication, 3 SuperNodes.

`flower-superlink` (TLS certificates from fedhaven's CA helpers, `--enable-supernode-auth`, a database
file, runtime dependency installation disabled, Flower's default subprocess isolation for the
ServerApp); each site's key registered through the Control API; `flower-supernode` per site in Flower's
default subprocess isolation (a fresh `flwr-clientapp` process per message) with
`--node-config "partition-id=i num-partitions=N"`; each run submitted as a FAB built from an app folder.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedhaven.sim.bench.deploy_breakdown import SENDING
from fedhaven.sim.bench.deploy_procs import BIN, MessageWatcher, Proc, child_env, free_port, wait_for_port

APP_SOURCE = Path(__file__).with_name("deploy_app.py")


@dataclass
class RunTrace:
    """What one run left behind for the breakdown: ids, times, messages, site lines, app records."""

    run_id: int
    submitted: float
    finished: float
    status: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    site_lines: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)  # Flower: timing file; fedhaven: metrics.jsonl
    objects: dict[str, list[float | None]] = field(default_factory=dict)  # message object id -> [stored, deleted]
    details: str = ""


def collect(*, watcher: MessageWatcher, run_id: int, nodes: dict[str, Proc], submitted: float, finished: float,
            status: str, details: str, records: list[dict[str, Any]]) -> RunTrace:
    """The run's messages, its sites' output lines and the life of every message object it exchanged."""
    time.sleep(0.3)  # the watcher's last polls
    messages = [m.__dict__ for m in watcher.messages(run_id)]
    lines = {name: [(t, x) for t, x in p.snapshot() if submitted <= t <= finished] for name, p in nodes.items()}
    ids = {m["message_id"] for m in messages} | {m["reply_id"] for m in messages if m["reply_id"]}
    ids |= {m[2] for ls in lines.values() for _, x in ls if (m := SENDING.search(x))}
    return RunTrace(run_id=run_id, submitted=submitted, finished=finished, status=status, details=details,
                    messages=messages, site_lines=lines, records=records, objects=watcher.object_spans(ids))


class FlowerDeployment:
    """One SuperLink and `len(data_dirs)` SuperNodes; `run()` submits an app and waits for it; `stop()` ends all."""

    def __init__(self, *, root: Path, data_dirs: list[Path]) -> None:
        self.root = root
        self.data_dirs = data_dirs
        self.port = free_port()
        self.procs: dict[str, Proc] = {}
        self.nodes: dict[str, Proc] = {}
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.watcher: MessageWatcher | None = None

    def _credentials(self) -> tuple[Path, list[tuple[Path, bytes]]]:
        from fedhaven.shared.crypto import make_ca, make_server_cert, make_site_keypair, write_private

        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca = make_ca(common_name="bench Flower CA")
        server = make_server_cert(ca=ca, dns_names=["localhost"], ips=["127.0.0.1"])
        (pki / "ca.pem").write_bytes(ca.cert_pem)
        (pki / "server.pem").write_bytes(server.cert_pem)
        write_private(pki / "server.key", server.key_pem)
        keys = []
        for i in range(len(self.data_dirs)):
            private, public = make_site_keypair()
            key = pki / f"node-{i}.key"
            write_private(key, private)
            keys.append((key, public))
        return pki, keys

    def start(self, *, timeout: float = 120) -> None:
        from fedhaven.server.seam.control import Control

        pki, keys = self._credentials()
        self.watcher = MessageWatcher(self.root / "superlink.db").__enter__()
        link = Proc("flower-superlink", [
            str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(pki / "ca.pem"), "--ssl-certfile",
            str(pki / "server.pem"), "--ssl-keyfile", str(pki / "server.key"), "--enable-supernode-auth",
            "--database", str(self.root / "superlink.db"), "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port)],
            env=child_env(flwr_home=self.root / "flwr-home-superlink"), cwd=self.root, log_dir=self.logs)
        self.procs["superlink"] = link
        wait_for_port(self.port, timeout=timeout, proc=link)
        self.control = Control(address=f"127.0.0.1:{self.port}", ca_cert=pki / "ca.pem",
                               flwr_home=self.root / "flwr-home-cli")
        for i, (key, public) in enumerate(keys):
            self.control.register_site(public_key=public, name=f"node-{i}")
            node = Proc(f"flower-supernode-{i}", [
                str(BIN / "flower-supernode"), "--root-certificates", str(pki / "ca.pem"),
                "--auth-supernode-private-key", str(key), "--superlink", f"127.0.0.1:{self.port}",
                "--node-config", f"partition-id={i} num-partitions={len(keys)}",
                "--host", "127.0.0.1", "--port", str(free_port())],
                env=child_env(flwr_home=self.root / f"flwr-home-node-{i}"), cwd=self.root, log_dir=self.logs)
            self.procs[f"node-{i}"] = self.nodes[f"site-{i}"] = node
        deadline = time.monotonic() + timeout
        while sum(str(n["status"]).lower() == "online" for n in self.control.nodes()) < len(keys):
            dead = [p.name for p in self.procs.values() if not p.alive()]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"Flower SuperNodes did not come online ({dead or 'timeout'}); see {self.logs}")
            time.sleep(0.5)

    def app_dir(self, *, kind: str, config: dict[str, Any]) -> Path:
        folder = self.root / "apps" / kind
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(APP_SOURCE, folder / "fhbench_app.py")
        doc = {"build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
               "project": {"name": f"fhbench-{kind}", "version": "1.0.0", "dependencies": []},
               "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                        "flwr": {"app": {"publisher": "fedhaven-bench",
                                         "components": {"serverapp": f"fhbench_app:{kind}_server",
                                                        "clientapp": f"fhbench_app:{kind}_client"},
                                         "config": config}}}}
        (folder / "pyproject.toml").write_text(tomli_w.dumps(doc))
        return folder

    def run(self, *, kind: str, config: dict[str, Any], timeout: float) -> RunTrace:
        """Submit the `kind` app ("plain" or "secagg") and wait until it finished; its timing file is read back."""
        timing = self.root / f"timing-{kind}.jsonl"
        timing.unlink(missing_ok=True)
        folder = self.app_dir(kind=kind, config={**config, "timing-file": str(timing)})
        submitted = time.time()
        run_id = self.control.start_run(app_dir=folder)
        deadline = time.monotonic() + timeout
        while not (state := self.control.run(run_id)).finished:
            if time.monotonic() > deadline:
                self.control.stop_run(run_id)
                raise RuntimeError(f"Flower {kind} run {run_id} did not finish within {timeout:.0f} s")
            time.sleep(0.5)
        finished = time.time()
        records = [json.loads(x) for x in timing.read_text().splitlines() if x.strip()] if timing.exists() else []
        assert self.watcher is not None
        return collect(watcher=self.watcher, run_id=run_id, nodes=self.nodes, submitted=submitted,
                       finished=finished, status=f"{state.status}:{state.sub_status}", details=state.details,
                       records=records)

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "superlink"] + ["superlink"]:
            if name in self.procs:
                self.procs[name].stop()
        if getattr(self, "control", None) is not None:
            self.control.close()
        if self.watcher is not None:
            self.watcher.__exit__()
