"""`fl-server status`: is the coordinator up, which sites are registered and online, which runs exist."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from fedhaven.server.coordinator import Runtime, control_for, leftover_parts, pid_alive
from fedhaven.server.provision import SiteRecord, StateDir
from fedhaven.server.records import read_rounds
from fedhaven.server.seam.control import ControlError
from fedhaven.shared.exitcodes import ExitCode, print_json

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (errors too, with a code)")


def last_failures(run_dir: Path, *, limit: int = 5) -> list[str]:
    """The site errors of a run's last failed round (refusals in the sites' own words), from its metrics.jsonl."""
    failed = [r for r in read_rounds(run_dir) if r.status == "failed"]  # a line torn by a crash is skipped
    return list(dict.fromkeys(failed[-1].failures))[:limit] if failed else []


def _site(rec: SiteRecord, live: dict[str, Any] | None) -> dict[str, Any]:
    """One registered site for `--json` (node ids as strings: they are 64-bit)."""
    return {"name": rec.name, "status": rec.status, "node_id": str(rec.node_id) if rec.node_id else None,
            "fingerprint": rec.fingerprint, "online": live["status"] if live else None,
            "last_activated_at": live.get("last_activated_at") or None if live else None}


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    as_json = getattr(args, "json", False)
    doc: dict[str, Any] = {"ok": False, "command": "fl-server status", "state_dir": str(state.root)}

    def done(code: ExitCode) -> int:
        if as_json:
            doc.update(ok=code == ExitCode.OK, exit_code=int(code))
            if code != ExitCode.OK:
                doc.setdefault("error", code.name.lower())
            print_json(doc)
        return int(code)

    rt = Runtime.load(state)
    if rt is not None and not pid_alive(rt.pid):
        left = leftover_parts(state, rt)
        if left:
            doc["coordinator"] = {"state": "broken", "pid": rt.pid, "leftover": left}
            doc["message"] = (f"coordinator: BROKEN: `fl-server start` (pid {rt.pid}) is gone but parts of it still "
                              f"run: {', '.join(f'{n} pid {p}' for n, p in left.items())}. `fl-server stop` stops "
                              f"them; `fl-server start` cleans them up and starts afresh")
            log.error("%s", doc["message"])
            return done(ExitCode.BROKEN)
    if rt is None or not pid_alive(rt.pid):
        doc["coordinator"] = {"state": "not_running"}
        doc["sites"] = [_site(rec, None) for rec in state.sites().values()]
        doc["message"] = f"coordinator: not running ({state.root})"
        log.info("%s", doc["message"])
        return done(ExitCode.NOT_RUNNING)
    parts = {"superlink": rt.superlink_pid, "executor": rt.superexec_pid}
    doc["coordinator"] = {"state": "running", "pid": rt.pid, "listen": rt.listen, "tls": not rt.insecure,
                          "started": rt.started,
                          "parts": {n: {"pid": pid, "up": pid_alive(pid)} for n, pid in parts.items()}}
    log.info("coordinator: running (pid %d), sites connect to %s%s", rt.pid, rt.listen,
             " WITHOUT TLS (--insecure)" if rt.insecure else "")
    for name, pid in parts.items():
        log.info("  %-9s pid %-7d %s", name, pid, "up" if pid_alive(pid) else "DOWN")
    control = control_for(state)
    try:
        nodes = {n["node_id"]: n for n in control.nodes()}
        doc["sites"] = []
        for rec in state.sites().values():
            live = nodes.get(rec.node_id) if rec.node_id else None
            doc["sites"].append(_site(rec, live))
            log.info("  site %-20s %-10s %s", rec.name, rec.status, live["status"] if live else "-")
        doc["runs"] = []
        for r in control.runs():
            failures = last_failures(state.runs / f"run-{r.run_id}")
            doc["runs"].append({"run_id": r.run_id, "status": r.status, "sub_status": r.sub_status,
                                "details": r.details, "last_failures": failures})
            log.info("  run %-20d %s:%s %s", r.run_id, r.status, r.sub_status, r.details)
            for reason in failures:
                log.info("      %s", reason)
    except ControlError as exc:
        doc["message"] = f"Control API: {exc}"
        log.error("%s", doc["message"])
        return done(ExitCode.FAILED)
    finally:
        control.close()
    return done(ExitCode.OK)
