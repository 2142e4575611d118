"""`fl-server run run.toml`: submit a training run of the fedhaven ServerApp and follow it round by round."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import tomli_w

from fedhaven.server.coordinator import Runtime, control_for, pid_alive
from fedhaven.server.flower_control import write_app_dir
from fedhaven.server.provision import StateDir
from fedhaven.shared.config import ConfigError, deep_merge, load_toml, parse, parse_override, to_dict
from fedhaven.shared.schema import RunConfig

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="run config (TOML): rounds, data, model, train, dp, secagg, strategy")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any setting, e.g. rounds=20")
    p.add_argument("--rounds", type=int, help="number of rounds")
    p.add_argument("--detach", action="store_true", help="submit and return; follow with `fl-server status`")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds (the run goes on)")


def load_run_config(*, path: Path, overrides: list[str], rounds: int | None, output_dir: Path) -> RunConfig:
    """defaults <- file <- overrides <- flags; output always in the coordinator's state directory."""
    data = load_toml(path)
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    if rounds is not None:
        data["rounds"] = rounds
    data["output_dir"] = str(output_dir)
    run = parse(RunConfig, data, source=str(path))
    problems = []
    if run.secagg.enabled and run.known_max_weight() is None:
        problems.append("secagg.max_weight: set it to at least the largest site's number of training examples "
                        "(a deployed coordinator cannot see site sizes before training)")
    from fedhaven.shared.data import load_data  # torch: imported only when a run is submitted

    from fedhaven.shared.models import model_problems

    try:
        test = load_data(cfg=run.data, split="test")
        problems += model_problems(cfg=run.model, spec=test.spec, dp=run.dp.enabled)
    except (ValueError, OSError) as exc:
        problems.append(f"data: the coordinator's held-out test set does not load: {exc}")
    if problems:
        raise ConfigError(problems, source=str(path))
    return run


def _print_round(line: dict) -> None:
    if line["status"] == "initial":
        log.info("round %3d  test accuracy %6.2f%%  (initial model)", 0, 100 * line["accuracy"])
    elif line["status"] == "ok":
        eps = line.get("epsilon_max")
        shown = "∞ (not private)" if not line.get("private", True) else (f"{eps:.3f}" if eps is not None else "n/a")
        log.info("round %3d  test accuracy %6.2f%%  loss %.4f  epsilon max %s  sites %d/%d  %.1f s", line["round"],
                 100 * line["accuracy"], line["loss"], shown,
                 line["sites_ok"], line["sites_ok"] + line["sites_failed"], line["round_time_s"])
    elif line["status"] == "rejected":
        log.error("round %3d  REJECTED, previous model kept: %s", line["round"], line.get("rejected"))
    else:
        log.error("round %3d  FAILED (attempt %d): %s", line["round"], line["attempt"],
                  "; ".join(line.get("failures", [])[:3]) or "no aggregate")


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    rt = Runtime.load(state)
    if rt is None or not pid_alive(rt.pid):
        raise RuntimeError(f"no coordinator is running from {state.root}; start it with `fl-server start`")
    cfg = load_run_config(path=args.config, overrides=args.overrides, rounds=args.rounds, output_dir=state.runs)
    if not cfg.dp.enabled:
        log.warning("WARNING: differential privacy is OFF for this run (sites with require_dp will refuse)")
    if not cfg.secagg.enabled:
        log.warning("WARNING: secure aggregation is OFF for this run (sites requiring it will refuse)")
    log.info("effective run configuration:\n%s", tomli_w.dumps(to_dict(cfg)))
    app_dir = write_app_dir(run=cfg)
    control = control_for(state)
    try:
        run_id = control.start_run(app_dir=app_dir)
        shutil.rmtree(app_dir, ignore_errors=True)
        run_dir = state.runs / f"run-{run_id}"
        log.info("run %d submitted; results in %s", run_id, run_dir)
        if args.detach:
            return 0
        seen = 0
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while True:
            status = control.run(run_id)
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists():
                lines = metrics.read_text().splitlines()
                for raw in lines[seen:]:
                    _print_round(json.loads(raw))
                seen = len(lines)
            if status.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                log.warning("stopped following run %d after %.0f s; it goes on (fl-server status)", run_id,
                            args.timeout)
                return 1
            time.sleep(1.0)
    finally:
        control.close()
    log.info("run %d finished: %s%s", run_id, status.sub_status, f" ({status.details})" if status.details else "")
    report = run_dir / "privacy.md"
    if report.exists():
        log.info("\n%s", report.read_text())
    rounds = _rounds_trained(run_dir)
    if status.sub_status == "completed" and rounds == 0:  # never a success: nothing was trained
        log.error("run %d aggregated no round: see the site failures above", run_id)
        return 1
    return 0 if status.sub_status == "completed" else 1


def _rounds_trained(run_dir: Path) -> int:
    """Rounds that produced an aggregate, from the run's metrics.jsonl."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return sum(json.loads(x).get("status") == "ok" for x in metrics.read_text().splitlines() if x.strip())
