"""The frame of fedhaven's commands: one module per subcommand, errors as messages that name the fix."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType

from fedhaven.shared.runtime import harden_environment


def build_parser(*, prog: str, description: str, package: str, subcommands: Mapping[str, str],
                 common: Callable[[argparse.ArgumentParser], None] | None = None,
                 ) -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """A parser with one subcommand per module `package.<name>`, each providing `add_arguments` and `run`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    modules: dict[str, ModuleType] = {}
    for name, help_ in subcommands.items():
        mod = importlib.import_module(f"{package}.{name}")
        p = sub.add_parser(name, help=help_, description=help_)
        if common is not None:
            common(p)
        p.add_argument("-v", "--verbose", action="store_true")
        mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def run_command(*, prog: str, built: tuple[argparse.ArgumentParser, dict[str, ModuleType]],
                argv: list[str] | None) -> int:
    """Parse, set up logging, run the subcommand; configuration problems exit 2, runtime failures exit 1."""
    from fedhaven.shared.config import ConfigError
    from fedhaven.shared.runtime import configure_logging

    harden_environment()
    parser, modules = built
    args = parse_with_overrides(parser, sys.argv[1:] if argv is None else argv)
    configure_logging(verbose=args.verbose)
    try:
        return int(modules[args.command].run(args) or 0)
    except ConfigError as exc:
        print(_prefixed(f"{prog} {args.command}", str(exc)), file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(_prefixed(f"{prog} {args.command}", str(exc)), file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"{prog} {args.command}: permission denied: {exc.filename or exc}. Only the account that owns it "
              f"may use it (files are the owner's alone by design); run this as that account.", file=sys.stderr)
        return 1


def _prefixed(prefix: str, message: str) -> str:
    """`prefix: message`, without saying the prefix twice when the message already starts with it."""
    return message if message.startswith(f"{prefix}:") else f"{prefix}: {message}"


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`, accepting `key=value` overrides anywhere on the line for commands that take overrides.

    argparse stops collecting a `nargs="*"` positional at the first option, so
    `fl-server run run.toml --state-dir X rounds=3` would be refused.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args
