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
    from fedhaven.shared.exitcodes import epilog

    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog())
    parser.add_argument("--version", action="version", version=version_line(prog))
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
    """Parse, set up logging, run the subcommand; exit with a code of `fedhaven.shared.exitcodes.ExitCode`.

    Configuration problems exit 2, runtime failures 1, a file of another account 5. Under a subcommand's
    `--json` the error is also one JSON document on stdout (`error_document`), the message still on stderr.
    """
    from fedhaven.shared.config import ConfigError
    from fedhaven.shared.exitcodes import ExitCode, error_document, print_json
    from fedhaven.shared.runtime import configure_logging

    harden_environment()
    parser, modules = built
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_with_overrides(parser, argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help/--version (0), already printed
        if exc.code not in (0, None) and "--json" in argv:
            print_json(error_document(command=prog, code=ExitCode.CONFIG, message="bad command line (see stderr)"))
        raise
    configure_logging(verbose=args.verbose)
    command = f"{prog} {args.command}"
    problems: tuple[str, ...] = ()
    try:
        return int(modules[args.command].run(args) or 0)
    except ConfigError as exc:
        code, message, problems = ExitCode.CONFIG, _prefixed(command, str(exc)), exc.problems
    except RuntimeError as exc:
        code, message = ExitCode.FAILED, _prefixed(command, str(exc))
    except PermissionError as exc:
        code, message = ExitCode.PERMISSION, (
            f"{command}: permission denied: {exc.filename or exc}. Only the account that owns it may use it (files "
            f"are the owner's alone by design); run this as that account.")
    print(message, file=sys.stderr)
    if getattr(args, "json", False):
        print_json(error_document(command=command, code=code, message=message, problems=problems))
    return int(code)


def version_line(prog: str) -> str:
    """`prog VERSION (Flower X, PyTorch Y, Opacus Z)`: what `--version` prints, read from the installed metadata."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return f"{prog} {of('fedhaven')} (Flower {of('flwr')}, PyTorch {of('torch')}, Opacus {of('opacus')})"


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
