"""fedhaven deployed on loopback exactly as an operator and its sites deploy it, with every output line timestamped.

The deployment is `fedhaven.sim.loopback` (the one the deployment tests use: `fl-server init`, keys by
`fl-client keygen`, `fl-server site add --public-key`, `fl-server start`, `fl-client start` per site,
`fl-server run`); here each long-running command's output is read line by line and stamped with the
time it was read, and the SuperLink's state is watched, so that rounds can be broken down.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhaven.sim.bench.deploy_flower import RunTrace, collect
from fedhaven.sim.bench.deploy_procs import BIN, MessageWatcher, Proc
from fedhaven.sim.loopback import LoopbackFederation, cli, command_env

#: Every variant may run, including the one without DP and SecAgg+ that is compared with plain Flower: a round
#: without DP spends an infinite epsilon, so these benchmark sites set no budget of their own (max_epsilon = inf).
PERMISSIVE_POLICY = ("max_epsilon = inf\nmin_noise_multiplier = 0.0\nrequire_dp = false\n"
                     "require_secure_aggregation = false")


@dataclass
class FedhavenDeployment(LoopbackFederation):
    """The loopback federation, its processes started as `Proc`s (own process group, output lines timed)."""

    policy: str = PERMISSIVE_POLICY
    cpu_threads: int | None = 0  # every core, like the Flower deployments it is compared with (torch's default)
    timed: dict[str, Proc] = field(default_factory=dict)
    watcher: MessageWatcher | None = None

    def spawn(self, name: str, *args: str) -> subprocess.Popen[Any]:  # a text-mode Popen
        proc = Proc(name, [str(BIN / args[0]), *args[1:]], env=command_env(self.env), cwd=self.root,
                    log_dir=self.root)
        self.timed[name] = proc
        self.procs[name] = proc.popen
        return proc.popen

    def data_dirs(self) -> list[Path]:
        """Each site's training data (IDX files), in site order: what the Flower deployment trains on too."""
        return [self.site_dirs[name] / "data" for name in self.site_names]

    def start(self, *, online_timeout: float = 180) -> FedhavenDeployment:
        super().start(online_timeout=online_timeout)
        self.watcher = MessageWatcher(self.state / "superlink.db").__enter__()
        return self

    def measure(self, *, name: str, toml: str, timeout: float) -> RunTrace:
        """`fl-server run` one variant, as the operator, to the end; its metrics.jsonl is read back."""
        submitted = time.time()
        res = cli("fl-server", "run", str(self.write_run(toml)), "--state-dir", str(self.state), timeout=timeout)
        finished = time.time()
        out = res.stdout + res.stderr
        (self.root / f"fl-server-run-{name}.log").write_text(out)
        m = re.search(r"submitted; results in (\S*run-(\d+))", out)
        if m is None:
            raise RuntimeError(f"fl-server run {name} named no run ({res.returncode}):\n{out[-3000:]}")
        metrics = Path(m[1]) / "metrics.jsonl"
        records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
        assert self.watcher is not None
        sites = {n: p for n, p in self.timed.items() if n in self.site_dirs}
        return collect(watcher=self.watcher, run_id=int(m[2]), nodes=sites, submitted=submitted, finished=finished,
                       status="completed" if res.returncode == 0 else f"failed ({res.returncode})",
                       details="" if res.returncode == 0 else _why(out), records=records)

    def stop(self) -> None:
        """Sites first, then the coordinator (which stops what it started), each by process group, then leftovers."""
        for name, proc in self.timed.items():
            if name in self.site_dirs:
                proc.stop()
        for name, proc in self.timed.items():
            if name not in self.site_dirs:
                proc.stop(timeout=60)
        if self.watcher is not None:
            self.watcher.__exit__()


def _why(out: str) -> str:
    """A failed run's own error lines (what the report shows), else the end of its output."""
    errors = [line.strip() for line in out.splitlines() if " ERROR " in line or "FAILED" in line]
    return "\n".join(errors)[-2000:] if errors else out[-2000:]
