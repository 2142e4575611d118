"""`fl-server status`: is the coordinator up, which sites are registered and online, which runs exist."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fedhaven.server.coordinator import Runtime, control_for, leftover_parts, pid_alive
from fedhaven.server.provision import StateDir
from fedhaven.server.seam.control import ControlError

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def last_failures(run_dir: Path, *, limit: int = 5) -> list[str]:
    """The site errors of a run's last failed round (refusals in the sites' own words), from its metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    failed = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    failed = [x for x in failed if x.get("status") == "failed"]
    return list(dict.fromkeys(failed[-1].get("failures", [])))[:limit] if failed else []


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    rt = Runtime.load(state)
    if rt is not None and not pid_alive(rt.pid):
        left = leftover_parts(state, rt)
        if left:
            log.error("coordinator: BROKEN: `fl-server start` (pid %d) is gone but parts of it still run: %s. "
                      "`fl-server stop` stops them; `fl-server start` cleans them up and starts afresh", rt.pid,
                      ", ".join(f"{n} pid {p}" for n, p in left.items()))
            return 4
    if rt is None or not pid_alive(rt.pid):
        log.info("coordinator: not running (%s)", state.root)
        return 3
    parts = {"superlink": rt.superlink_pid, "executor": rt.superexec_pid}
    log.info("coordinator: running (pid %d), sites connect to %s%s", rt.pid, rt.listen,
             " WITHOUT TLS (--insecure)" if rt.insecure else "")
    for name, pid in parts.items():
        log.info("  %-9s pid %-7d %s", name, pid, "up" if pid_alive(pid) else "DOWN")
    control = control_for(state)
    try:
        nodes = {n["node_id"]: n for n in control.nodes()}
        for rec in state.sites().values():
            live = nodes.get(rec.node_id) if rec.node_id else None
            log.info("  site %-20s %-10s %s", rec.name, rec.status, live["status"] if live else "-")
        for r in control.runs():
            log.info("  run %-20d %s:%s %s", r.run_id, r.status, r.sub_status, r.details)
            for reason in last_failures(state.runs / f"run-{r.run_id}"):
                log.info("      %s", reason)
    except ControlError as exc:
        log.error("Control API: %s", exc)
        return 1
    finally:
        control.close()
    return 0
