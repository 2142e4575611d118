"""`fl-sim`: simulate many sites on one machine. `fl-sim run`, `fl-sim check`, `fl-sim list`, `fl-sim compare`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhaven.shared.runtime import configure_logging, harden_environment

harden_environment()  # before anything imports flwr: Flower reads the telemetry switch on import

from fedhaven.server.progress import ProgressBar, print_round  # noqa: E402 - imported after harden_environment()
from fedhaven.shared.cli import parse_with_overrides, version_line  # noqa: E402 - after harden_environment()
from fedhaven.shared.config import ConfigError, parse, to_dict  # noqa: E402 - imported after harden_environment()
from fedhaven.shared.exitcodes import ExitCode, epilog  # noqa: E402 - imported after harden_environment()
from fedhaven.shared.schema import ExperimentConfig  # noqa: E402 - imported after harden_environment()
from fedhaven.sim.experiment import (  # noqa: E402 - imported after harden_environment()
    DEFAULT_EXPERIMENT,
    EXPERIMENT_FILE,
    bundled_experiments,
    load_experiment,
)

if TYPE_CHECKING:
    from fedhaven.server.records import RoundRecord

COMMANDS = ("run", "check", "list", "compare")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fl-sim", description="Simulate a fedhaven federation on this machine "
                                "(Flower simulation engine), with the same ClientApp and ServerApp as deployment.")
    p.add_argument("--version", action="version", version=version_line("fl-sim"))
    p.epilog = epilog()
    sub = p.add_subparsers(dest="command")
    for name, help_ in (("run", "run an experiment (the default command)"),
                        ("check", "validate an experiment and print its effective config, without training")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT,
                       help=f"a bundled experiment ({', '.join(bundled_experiments())}) or a TOML file")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="override any setting, e.g. train.lr=0.5")
        s.add_argument("--sites", type=int, help="number of simulated sites")
        s.add_argument("--rounds", type=int, help="number of federated rounds")
        s.add_argument("--partition", help="iid, dirichlet:ALPHA (label skew, e.g. dirichlet:0.3) or folders")
        s.add_argument("--seed", type=int, help="seed for data split and model initialisation")
        s.add_argument("--no-dp", action="store_true", help="turn differential privacy OFF (prints a warning)")
        s.add_argument("--no-secagg", action="store_true", help="turn secure aggregation OFF (prints a warning)")
        s.add_argument("--run-dir", type=Path, help="write results here instead of OUTPUT_DIR/NAME-TIMESTAMP")
        s.add_argument("--ray-address", metavar="ADDRESS",
                       help="run on an existing Ray cluster (e.g. 10.0.0.5:6379) instead of a local Ray; every node "
                            "needs this fedhaven installation (same as simulation.ray_address)")
        if name == "run":
            s.add_argument("--resume", type=Path, metavar="RUN_DIR",
                           help="continue an interrupted run from its last complete round, with its own settings")
            s.add_argument("--show-config", action="store_true",
                           help="print the whole effective configuration (always written to experiment.json)")
        s.add_argument("-v", "--verbose", action="store_true",
                       help="show Flower's, Ray's and Python's own messages (workers included)")
    sub.add_parser("list", help="list the bundled experiments")
    from fedhaven.sim import compare

    compare.add_arguments(sub.add_parser("compare", help=compare.HELP, description=compare.HELP))
    return p


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for key in ("sites", "rounds", "partition", "seed"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    if getattr(args, "ray_address", None):
        flags["simulation"] = {"ray_address": args.ray_address}
    if args.no_dp:
        flags["dp"] = {"enabled": False}
    if args.no_secagg:
        flags["secagg"] = {"enabled": False}
    return flags


def effective_config(exp: ExperimentConfig) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(exp))


def changed_settings(exp: ExperimentConfig) -> list[str]:
    """`key=value` for every setting that differs from fedhaven's defaults (the name and places excepted)."""
    from fedhaven.shared.config import flatten

    ours, defaults = flatten(to_dict(exp)), flatten(to_dict(ExperimentConfig()))
    skip = ("name", "output_dir", "resume_from")
    return [f"{k}={v}" for k, v in ours.items() if k not in skip and defaults.get(k) != v]


def headline(exp: ExperimentConfig) -> list[str]:
    """What this run is, in a few lines: data, sites, rounds, privacy, and the settings not at their defaults."""
    dp = (f"DP epsilon <= {exp.dp.target_epsilon:g} per site at delta {exp.dp.delta:g}" if exp.dp.enabled
          else "DP OFF")
    out = [f"{exp.name}: {exp.sites} sites, {exp.partition} split of {exp.data.source}, {exp.rounds} rounds, {dp}, "
           f"SecAgg+ {'on' if exp.secagg.enabled else 'OFF'}"]
    changed = changed_settings(exp)
    if changed:
        line, lines = "not default:", []
        for item in changed:  # wrapped: a handful of lines at most
            if len(line) + len(item) > 110:
                lines.append(line)
                line = "            "
            line += f" {item}"
        out += [*lines, line]
    return out


def resumed_experiment(args: argparse.Namespace) -> ExperimentConfig:
    """The interrupted run's own experiment (its experiment.json), to be continued in its directory."""
    run_dir = Path(args.resume).expanduser().resolve()
    given = [f for f in ("sites", "rounds", "partition", "seed", "run_dir", "ray_address")
             if getattr(args, f, None) is not None]
    if args.overrides or given or args.no_dp or args.no_secagg or args.experiment != DEFAULT_EXPERIMENT:
        raise ConfigError(["--resume continues a run with its own settings: give no experiment, overrides or flags"],
                          source="fl-sim run --resume")
    path = run_dir / EXPERIMENT_FILE
    if not path.exists():
        raise ConfigError([f"{run_dir}: not a fedhaven simulation run directory (no {EXPERIMENT_FILE})"],
                          source="fl-sim run --resume")
    if (run_dir / "model.pt").exists():
        raise ConfigError([f"{run_dir} finished: its model.pt is written; run the experiment again instead"],
                          source="fl-sim run --resume")
    data = json.loads(path.read_text())
    data["resume_from"] = str(run_dir)
    return parse(ExperimentConfig, data, source=str(path))


def warnings_for(exp: ExperimentConfig) -> list[str]:
    """Loud notes for every protection that is turned off."""
    out = []
    if not exp.dp.enabled:
        out.append("WARNING: differential privacy is OFF: site updates carry no formal privacy guarantee.")
    if not exp.secagg.enabled:
        out.append("WARNING: secure aggregation is OFF: the coordinator sees every site's update in the clear.")
    if not exp.robust.enabled:
        out.append("WARNING: the defences against a bad site are OFF (robust.enabled = false): no update is checked "
                   "or bounded; one NaN or scaled update can ruin the model.")
    from fedhaven.sim.attack import warning_for

    attack = warning_for(exp)
    if attack:
        out.append(attack)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv.insert(0, "run")
    args = parse_with_overrides(_parser(), argv)
    logger = configure_logging(verbose=getattr(args, "verbose", False))
    if args.command == "list":
        for name in bundled_experiments():
            print(name)
        return 0
    if args.command == "compare":
        from fedhaven.sim import compare

        return compare.run(args)
    try:
        if getattr(args, "resume", None) is not None:
            exp = resumed_experiment(args)
        else:
            exp = load_experiment(source=args.experiment, overrides=args.overrides, flags=_flags(args))
    except ConfigError as exc:
        print(f"fl-sim: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    for w in warnings_for(exp):
        logger.warning(w)
    if args.command == "check" or getattr(args, "show_config", False):
        logger.info("effective configuration:\n%s", effective_config(exp))
    else:
        for line in headline(exp):
            logger.info("%s", line)

    from fedhaven.sim.runner import SimulationFailed, check_experiment, run_experiment, sites_per_round

    try:
        checked = check_experiment(exp)
    except (ConfigError, ValueError) as exc:
        print(f"fl-sim: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    sizes = checked.sizes
    logger.info("%d sites, %d-%d training examples each, %d per round", len(sizes), min(sizes), max(sizes),
                sites_per_round(exp))
    for line in checked.needs:  # what the machine must give: printed by `check`, behind --verbose for a run
        logger.log(logging.INFO if args.command == "check" else logging.DEBUG, "%s", line)
    if args.command == "check":
        logger.info("check passed: nothing was trained")
        return 0

    run_dir = (Path(exp.resume_from) if exp.resume_from else
               args.run_dir or Path(exp.output_dir) / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}")

    bar = ProgressBar(planned=exp.rounds)

    def progress(rec: RoundRecord) -> None:
        print_round(logger, asdict(rec), planned=exp.rounds, bar=bar)

    logger.info("running %s -> %s (full configuration in %s)", exp.name, run_dir, run_dir / EXPERIMENT_FILE)
    try:
        summary = run_experiment(exp=exp, run_dir=run_dir, on_round=progress, verbose=args.verbose)
    except (SimulationFailed, ConfigError) as exc:
        print(f"fl-sim: FAILED: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    logger.info("\n%s", summary.text())
    for w in warnings_for(exp):
        logger.warning(w)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
