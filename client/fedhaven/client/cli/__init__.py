"""`fl-client`: the site's command. One module per subcommand: keygen, check, start, ledger."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.shared.runtime import harden_environment

if TYPE_CHECKING:
    import argparse
    from types import ModuleType

harden_environment()  # before anything imports flwr

SUBCOMMANDS = {
    "keygen": "create this site's key pair; send the public key to the operator",
    "check": "validate site.toml, credentials and data without connecting",
    "start": "join the federation (starts Flower's SuperNode with this site's key)",
    "ledger": "show, verify, init (new site) or reset (with a reason) this site's privacy ledger",
}


#: The environment variable that names the site's configuration file (and so its state directory, its
#: `state_dir`) when --config is not given.
SITE_CONFIG_ENV = "FEDHAVEN_SITE_CONFIG"


def default_config() -> Path:
    """The site.toml a subcommand reads without --config: $FEDHAVEN_SITE_CONFIG, else ./site.toml."""
    import os

    return Path(os.environ.get(SITE_CONFIG_ENV) or "site.toml")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The command's parser and its subcommand modules (also used to check deploy files)."""
    from fedhaven.shared.cli import build_parser as frame

    return frame(prog="fl-client", description="fedhaven site, for the site's IT.", package="fedhaven.client.cli",
                 subcommands=SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    import os

    from fedhaven.shared.cli import run_command

    os.umask(0o077)  # the site's state, ledger, lock and caches are its own account's alone (and its processes')
    return run_command(prog="fl-client", built=build_parser(), argv=argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
