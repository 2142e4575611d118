"""What the operator's console and metrics show, read once per request from the same places `fl-server status`
and `site list` read: the site registry, the SuperLink's Control API (over the operator's socket) and the run
directories (metrics.jsonl, privacy.json, config.json)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhaven.server.cli.run import interrupted_runs
from fedhaven.server.coordinator import control_for
from fedhaven.server.provision import StateDir
from fedhaven.server.records import RoundRecord, read_rounds
from fedhaven.server.seam.control import ControlError, RunState
from fedhaven.shared.files import read_json_object


@dataclass(frozen=True)
class SiteView:
    """One registered (or revoked) site as the coordinator knows it."""

    name: str
    status: str  # the registry's: pending, registered, revoked
    fingerprint: str
    online: bool
    node_status: str  # the SuperLink's word for the node ("-" when it knows none)
    last_seen: str  # "now" while online, else when the SuperLink marked it offline ("-": never seen)
    epsilon: float | None  # newest cumulative epsilon the site reported (inf: not private; None: never reported)


@dataclass(frozen=True)
class RunView:
    """One run: Flower's status, and what its run directory holds."""

    name: str  # run directory name, e.g. run-123
    run_id: int | None  # Flower's run id (None: a directory the SuperLink does not list, e.g. an older database)
    status: str  # Flower's status:sub_status, or the directory's own state
    rounds: tuple[RoundRecord, ...]
    planned: int
    target_epsilon: float | None
    site_epsilon: dict[str, float]  # each site's epsilon as the run's privacy record states it
    failures: tuple[str, ...]  # the site errors of the last failed round, in the sites' words
    refusals: dict[str, int]  # refusal code -> count, over the run's attempts
    running: bool
    resumable: bool

    @property
    def done(self) -> int:
        return len({r.round for r in self.rounds if r.status == "ok"})

    @property
    def rejected(self) -> int:
        return sum(r.status == "rejected" for r in self.rounds)

    @property
    def last_accuracy(self) -> float | None:
        ok = [r.accuracy for r in self.rounds if r.status in ("ok", "initial") and r.accuracy is not None]
        return ok[-1] if ok else None

    def budget_left(self, site: str) -> float | None:
        """What the run's target leaves the site (its own cap is its policy, which the coordinator cannot see)."""
        eps = self.site_epsilon.get(site)
        if self.target_epsilon is None or eps is None:
            return None
        return max(0.0, self.target_epsilon - eps)


@dataclass(frozen=True)
class FederationView:
    """Everything the console's pages and the metrics endpoint show, read at one moment."""

    sites: tuple[SiteView, ...]
    runs: tuple[RunView, ...]
    control_error: str | None = None  # the Control API did not answer: sites' online state and run status unknown
    refusals: dict[str, int] = field(default_factory=dict)

    def run(self, name: str) -> RunView | None:
        return next((r for r in self.runs if r.name == name), None)



def _epsilon(value: Any) -> float:
    return math.inf if value is None else float(value)


def read_run(run_dir: Path, *, state: RunState | None, resumable: bool) -> RunView:
    """A run directory as the console shows it (a directory being written is read as far as it is written)."""
    rounds = tuple(read_rounds(run_dir))
    config = read_json_object(run_dir / "config.json")
    dp = config.get("dp") or {}
    privacy = read_json_object(run_dir / "privacy.json")
    site_eps = {name: _epsilon(s.get("epsilon")) for name, s in (privacy.get("sites") or {}).items()}
    for rec in rounds:  # while it trains, privacy.json is not written yet: the newest round's record
        site_eps.update({k: _epsilon(v) for k, v in rec.epsilons.items() if k not in privacy.get("sites", {})})
    refusals: Counter[str] = Counter()
    for rec in rounds:
        refusals.update(rec.refusals)
    if state is not None:
        status = f"{state.status}:{state.sub_status}" if state.sub_status else state.status
    elif (run_dir / "model.pt").exists():
        status = "finished"
    else:
        status = privacy.get("outcome", "interrupted" if resumable else "unknown")
    target = dp.get("target_epsilon") if dp.get("enabled", True) else None
    return RunView(name=run_dir.name, run_id=state.run_id if state is not None else None, status=str(status),
                   rounds=rounds, planned=int(config.get("rounds", 0) or 0),
                   target_epsilon=float(target) if isinstance(target, int | float) else None,
                   site_epsilon=site_eps, failures=_last_failures(rounds), refusals=dict(refusals),
                   running=state is not None and not state.finished, resumable=resumable)


def _last_failures(rounds: tuple[RoundRecord, ...], *, limit: int = 5) -> tuple[str, ...]:
    """The site errors of the last failed attempt, once each (as `fl-server status` shows them; a torn line skipped)."""
    failed = [r for r in rounds if r.status == "failed"]
    return tuple(dict.fromkeys(failed[-1].failures))[:limit] if failed else ()


def _last_seen(node: dict[str, Any] | None) -> str:
    if node is None:
        return "-"
    if str(node["status"]).lower() == "online":
        return "now"
    return str(node.get("last_deactivated_at") or node.get("last_activated_at") or "-")


def read_federation(state: StateDir) -> FederationView:
    """The federation now: the registry, the SuperLink's nodes and runs (when it answers), every run directory."""
    nodes: dict[int, dict[str, Any]] = {}
    flower_runs: dict[int, RunState] = {}
    error = None
    try:
        control = control_for(state)
        try:
            nodes = {int(n["node_id"]): n for n in control.nodes()}
            flower_runs = {r.run_id: r for r in control.runs()}
        finally:
            control.close()
    except ControlError as exc:
        error = str(exc)
    running = {f"run-{i}" for i, r in flower_runs.items() if not r.finished}
    # A resumed run is a new Flower run writing in the old directory: while any run trains, which directory it
    # writes to is not known here, so nothing is offered for resuming then (`fl-server run --resume` still is).
    resumable = set() if running else {name for name, _, _ in interrupted_runs(state, running=running)}
    dirs = sorted(state.runs.glob("run-*"), key=lambda p: p.stat().st_mtime, reverse=True) if state.runs.exists() \
        else []
    runs = []
    for d in dirs:
        rid = d.name.removeprefix("run-")
        runs.append(read_run(d, state=flower_runs.get(int(rid)) if rid.isdigit() else None,
                             resumable=d.name in resumable))
    known = {r.name for r in runs}
    for run_id, flower_run in sorted(flower_runs.items(), reverse=True):  # e.g. a resumed run, in an older folder
        if f"run-{run_id}" not in known:
            runs.append(read_run(state.runs / f"run-{run_id}", state=flower_run, resumable=False))
    refusals: Counter[str] = Counter()
    newest: dict[str, tuple[float, float]] = {}  # site -> (time of the record, epsilon)
    for run in runs:
        refusals.update(run.refusals)
        for rnd in run.rounds:
            for site, eps in rnd.epsilons.items():
                if rnd.time >= newest.get(site, (-math.inf, 0.0))[0]:
                    newest[site] = (rnd.time, _epsilon(eps))
    sites = []
    for reg in sorted(state.sites().values(), key=lambda r: r.name):
        node = nodes.get(reg.node_id) if reg.node_id is not None else None
        sites.append(SiteView(name=reg.name, status=reg.status, fingerprint=reg.fingerprint,
                              online=node is not None and str(node["status"]).lower() == "online",
                              node_status=str(node["status"]) if node else "-", last_seen=_last_seen(node),
                              epsilon=newest[reg.name][1] if reg.name in newest else None))
    return FederationView(sites=tuple(sites), runs=tuple(runs), control_error=error, refusals=dict(refusals))

