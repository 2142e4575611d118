"""`fl-server`: the operator's command. One module per subcommand: init, site, start, run, status, stop."""

from __future__ import annotations

import argparse
import importlib
import sys

from fedhaven.shared.runtime import harden_environment

harden_environment()  # before anything imports flwr

SUBCOMMANDS = {
    "init": "create the state directory: CA, coordinator certificate, server.toml",
    "site": "add, revoke or list sites (per-site credential bundles)",
    "start": "start the coordinator (SuperLink + executor on loopback, Fleet front for sites)",
    "run": "submit a training run from a run config file and follow it",
    "status": "show the coordinator, its sites and its runs",
    "stop": "stop a run (--run ID) or the coordinator",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The command's parser and its subcommand modules (also used to check deploy files)."""
    parser = argparse.ArgumentParser(prog="fl-server", description="fedhaven coordinator, for operators.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, help_ in SUBCOMMANDS.items():
        mod = importlib.import_module(f"fedhaven.server.cli.{name}")
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--state-dir", default="fedhaven-coordinator",
                       help="the coordinator's state directory (default: ./fedhaven-coordinator)")
        p.add_argument("-v", "--verbose", action="store_true")
        mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from fedhaven.shared.config import ConfigError
    from fedhaven.shared.runtime import configure_logging

    parser, modules = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(verbose=args.verbose)
    try:
        return int(modules[args.command].run(args) or 0)
    except ConfigError as exc:
        print(f"fl-server {args.command}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"fl-server {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
