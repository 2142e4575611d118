"""`fl-server`: the operator's command. One module per subcommand: init, site, check, start, run, status, stop."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedhaven.shared.runtime import harden_environment

if TYPE_CHECKING:
    from types import ModuleType

harden_environment()  # before anything imports flwr

SUBCOMMANDS = {
    "init": "create the state directory: CA, coordinator certificate, server.toml",
    "site": "add, revoke or list sites (per-site credential bundles)",
    "check": "check server.toml (the Fleet door's limits included) and the PKI without starting anything",
    "start": "start the coordinator (SuperLink + executor on loopback, Fleet front for sites)",
    "run": "submit a training run from a run config file and follow it",
    "status": "show the coordinator, its sites and its runs",
    "stop": "stop a run (--run ID) or the coordinator",
}


#: The environment variable that names the coordinator's state directory when --state-dir is not given.
STATE_DIR_ENV = "FEDHAVEN_STATE_DIR"


def _state_dir(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument("--state-dir", default=os.environ.get(STATE_DIR_ENV) or "fedhaven-coordinator",
                   help=f"the coordinator's state directory (default: ${STATE_DIR_ENV}, else ./fedhaven-coordinator)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The command's parser and its subcommand modules (also used to check deploy files)."""
    from fedhaven.shared.cli import build_parser as frame

    return frame(prog="fl-server", description="fedhaven coordinator, for operators.",
                 package="fedhaven.server.cli", subcommands=SUBCOMMANDS, common=_state_dir)


def main(argv: list[str] | None = None) -> int:
    import os

    from fedhaven.shared.cli import run_command

    os.umask(0o077)  # everything the operator's commands and the coordinator write is the operator's alone

    return run_command(prog="fl-server", built=build_parser(), argv=argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
