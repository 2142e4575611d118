"""`fl-client`: the site's command. One module per subcommand: keygen, check, start, ledger."""

from __future__ import annotations

import argparse
import importlib
import sys

from fedhaven.shared.runtime import harden_environment

harden_environment()  # before anything imports flwr

SUBCOMMANDS = {
    "keygen": "create this site's key pair; send the public key to the operator",
    "check": "validate site.toml, credentials and data without connecting",
    "start": "join the federation (starts Flower's SuperNode with this site's key)",
    "ledger": "show or verify this site's privacy ledger",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The command's parser and its subcommand modules (also used to check deploy files)."""
    parser = argparse.ArgumentParser(prog="fl-client", description="fedhaven site, for the site's IT.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, help_ in SUBCOMMANDS.items():
        mod = importlib.import_module(f"fedhaven.client.cli.{name}")
        p = sub.add_parser(name, help=help_, description=help_)
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
        print(f"fl-client {args.command}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"fl-client {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
