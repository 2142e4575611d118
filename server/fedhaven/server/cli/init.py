"""`fl-server init`: a CA, the coordinator's TLS certificate (SANs for its names, its IPs and 127.0.0.1),
server.toml."""

from __future__ import annotations

import argparse
import logging

from fedhaven.server.provision import CoordinatorConfig, StateDir, init_state
from fedhaven.shared.config import parse
from fedhaven.shared.crypto import cert_names

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", action="append", default=[], help="DNS name sites use (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address sites use (repeatable)")
    p.add_argument("--listen", default="0.0.0.0:9092", help="where the Fleet front listens")
    p.add_argument("--public-address", help="host:port written into site bundles (default: first name, listen port)")
    p.add_argument("--superlink-port", type=int, default=9093, help="the SuperLink's port on 127.0.0.1")
    p.add_argument("--force", action="store_true", help="replace an existing CA (every site must be re-provisioned)")


def run(args: argparse.Namespace) -> int:
    names = args.name or ["localhost"]
    port = args.listen.rpartition(":")[2]
    cfg = parse(CoordinatorConfig, {"names": names, "ips": args.ip, "listen": args.listen,
                                    "superlink_port": args.superlink_port,
                                    "public_address": args.public_address or f"{names[0]}:{port}"},
                source="fl-server init")
    state = StateDir(args.state_dir)
    init_state(state=state, cfg=cfg, force=args.force)
    dns, ips = cert_names(state.server_cert.read_bytes())
    log.info("initialised %s", state.root)
    log.info("  CA certificate      %s  (give it to every site)", state.ca_cert)
    log.info("  CA key              %s  (0600; keep it offline if you can)", state.ca_key)
    log.info("  server certificate  valid for %s", ", ".join([*dns, *ips]))
    log.info("  sites dial          %s", cfg.public_address)
    log.info("next: fl-server site add <name> [--public-key site.pub] --state-dir %s", state.root)
    return 0
