"""`fl-client keygen`: the site's SuperNode key pair (EC P-384, OpenSSH); the private key never leaves the site."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedhaven.shared.crypto import fingerprint, make_site_keypair, write_private, write_public

log = logging.getLogger("fedhaven.client")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("."), help="folder for site.key (0600) and site.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key (the operator must re-add the site)")


def run(args: argparse.Namespace) -> int:
    key, pub = args.out / "site.key", args.out / "site.pub"
    if key.exists() and not args.force:
        raise RuntimeError(f"{key} already exists; a new key locks this site out until the operator re-adds it "
                           f"(use --force)")
    private, public = make_site_keypair()
    write_private(key, private)
    write_public(pub, public)
    log.info("private key %s (0600, stays here)", key)
    log.info("public key  %s  fingerprint %s", pub, fingerprint(public))
    log.info("send %s to the operator: fl-server site add <name> --public-key site.pub", pub)
    return 0
