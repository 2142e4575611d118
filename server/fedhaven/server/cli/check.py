"""`fl-server check`: server.toml (every setting in range, the door limits included) and the coordinator's PKI,
checked without starting anything; every problem at once, each naming its fix."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict

from fedhaven.server.provision import StateDir
from fedhaven.shared.config import ConfigError

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="do not require the TLS certificates (as `start --insecure`)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (errors too, with a code)")


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    problems: list[str] = []
    cfg = None
    try:
        cfg = state.config()
    except ConfigError as exc:
        problems += exc.problems
    if not args.insecure and not state.has_pki():
        problems.append(f"{state.pki}: TLS certificates missing; run `fl-server init --state-dir {state.root}` (or "
                        f"check with --insecure for a plain-HTTP test coordinator)")
    if problems or cfg is None:
        raise ConfigError(problems, source=str(state.config_file))
    limits = cfg.limits
    if args.json:
        from fedhaven.shared.exitcodes import print_json

        print_json({"ok": True, "command": "fl-server check", "config": str(state.config_file),
                    "listen": cfg.listen, "limits": asdict(limits)})
        return 0
    log.info("%s: OK", state.config_file)
    log.info("  Fleet door on %s: each site at most %g requests/s (bursts of %d) and %d open; %d connections per "
             "address (%g new/s, bursts of %d), %d in all, %d TLS handshakes at once; headers %d bytes in %g s; "
             "object pushes up to %d bytes, %d bytes in flight; requests done in %g s", cfg.listen, limits.node_rate,
             limits.node_burst, limits.per_node, limits.per_source, limits.source_rate, limits.source_burst,
             limits.connections, limits.handshakes, limits.max_header, limits.header_timeout, limits.max_object,
             limits.in_flight, limits.read_timeout)
    return 0
