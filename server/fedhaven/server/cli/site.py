"""`fl-server site add|revoke|list`: one credential bundle per site; adding or revoking one touches no other."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedhaven.server.coordinator import Runtime, control_for, pid_alive, sync_sites
from fedhaven.server.provision import StateDir, add_site, revoke_site

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("add", "revoke", "list"))
    p.add_argument("name", nargs="?", help="site name (add, revoke)")
    p.add_argument("--public-key", type=Path, help="the site's own public key (from `fl-client keygen`); "
                   "without it a key pair is generated into the bundle")
    p.add_argument("--json", action="store_true", help="list: print one JSON document on stdout (errors too)")


def _sync_if_running(state: StateDir) -> None:
    rt = Runtime.load(state)
    if rt is None or not pid_alive(rt.superlink_pid) or rt.insecure:
        log.info("the coordinator is not running: the change takes effect at the next `fl-server start`")
        return
    control = control_for(state)
    try:
        for note in sync_sites(state=state, control=control):
            log.info("%s", note)
    finally:
        control.close()


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    if args.action == "list":
        if getattr(args, "json", False):
            from dataclasses import asdict

            from fedhaven.shared.exitcodes import print_json

            # node ids as strings: they are 64-bit, more than a JSON reader's double holds exactly
            print_json({"ok": True, "command": "fl-server site list", "state_dir": str(state.root),
                        "sites": [{**asdict(rec), "node_id": str(rec.node_id) if rec.node_id else None}
                                  for rec in state.sites().values()]})
            return 0
        for rec in state.sites().values():
            log.info("%-24s %-10s node %-22s key %s", rec.name, rec.status, rec.node_id or "-", rec.fingerprint)
        return 0
    if not args.name:
        raise RuntimeError(f"`fl-server site {args.action}` needs a site name")
    if args.action == "add":
        public = args.public_key.read_bytes() if args.public_key else None
        record, bundle = add_site(state=state, name=args.name, public_key=public)
        log.info("site %s added, key %s", record.name, record.fingerprint)
        log.info("bundle for the site's IT: %s (ca.pem, site.toml%s)", bundle,
                 ", site.key: send it over a secure channel" if (bundle / "site.key").exists() else "")
    else:
        record = revoke_site(state=state, name=args.name)
        log.info("site %s revoked", record.name)
    _sync_if_running(state)
    return 0
