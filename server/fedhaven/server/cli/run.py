"""`fl-server run run.toml`: submit a training run of the fedhaven ServerApp and follow it round by round."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import tomli_w

from fedhaven.server.coordinator import Runtime, control_for, pid_alive
from fedhaven.server.latency.checked import CHECKED_FILE, CheckedRuns, fingerprint
from fedhaven.server.progress import RUN_LOG, ProgressBar, print_round, run_log_fields
from fedhaven.server.provision import StateDir
from fedhaven.server.seam.control import write_app_dir
from fedhaven.shared.config import ConfigError, deep_merge, load_toml, parse, parse_override, to_dict
from fedhaven.shared.exitcodes import print_json
from fedhaven.shared.files import read_json_object
from fedhaven.shared.recipe import apply_recipe
from fedhaven.shared.schema import RunConfig

log = logging.getLogger("fedhaven.server")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, nargs="?",
                   help="run config (TOML): rounds, data, model, train, dp, secagg, strategy")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any setting, e.g. rounds=20")
    p.add_argument("--rounds", type=int, help="number of rounds")
    p.add_argument("--resume", metavar="RUN",
                   help="continue an interrupted run (its id or run directory) from its last complete round, "
                        "with its own config; no config file is given then")
    p.add_argument("--detach", action="store_true", help="submit and return; follow with `fl-server status`")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds (the run goes on)")
    p.add_argument("--show-config", action="store_true",
                   help="print the whole effective run configuration (always written to the run's config.json)")
    p.add_argument("--json", action="store_true",
                   help="print the final result as one JSON document on stdout (progress stays on stderr)")


def load_run_config(*, path: Path, overrides: list[str], rounds: int | None, output_dir: Path,
                    checked: CheckedRuns | None = None, sites: int = 0) -> RunConfig:
    """defaults <- file <- overrides <- flags; output always in the coordinator's state directory.

    Under `train.recipe = "auto"` the rule's settings that the file leaves out are resolved here, for
    `sites` sites (those registered; at least `min_sites`); each site derives its own batch from its size.
    The model and held-out test set are checked unless `checked` records that this very combination passed
    (see `fedhaven.server.latency.checked`; the ServerApp checks them again in every run)."""
    data = load_toml(path)
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    if rounds is not None:
        data["rounds"] = rounds
    data["output_dir"] = str(output_dir)
    run = parse(RunConfig, data, source=str(path))
    if run.train.recipe == "auto":
        run = apply_recipe(run, given=data, sites=max(sites, run.min_sites))
    problems = []
    if run.secagg.enabled and run.known_max_weight() is None:
        problems.append("secagg.max_weight: set it to at least the largest site's number of training examples "
                        "(a deployed coordinator cannot see site sizes before training)")
    key = fingerprint(run, sites=sites) if checked is not None else ""
    if checked is not None and checked.passed(key):
        log.info("model and test set: passed this check before with the same settings, files and versions "
                 "(%s); the ServerApp checks them again", checked.path)
    else:
        problems += _model_and_data_problems(run, sites=max(sites, run.min_sites))
    if problems:
        raise ConfigError(problems, source=str(path))
    if checked is not None:
        checked.remember(key)
    return run


def _model_and_data_problems(run: RunConfig, *, sites: int) -> list[str]:
    """The test set loads (decoded into the coordinator's cache), the model takes its images, and evaluating it
    fits the run's memory_mb and the cache's disk."""
    from fedhaven.shared.features import features_cached
    from fedhaven.shared.footprint import data_footprint, disk_problems, machine_problems
    from fedhaven.shared.models import model_problems
    from fedhaven.shared.sources import load_data  # torch: imported only when a run is submitted

    try:
        test = load_data(cfg=run.data, split="test", cache_dir=run.cache_dir())
        problems = model_problems(cfg=run.model, spec=test.spec, dp=run.dp.enabled)
    except (ValueError, OSError) as exc:
        return [f"data: the coordinator's held-out test set does not load: {exc}"]
    if problems:
        return problems
    need = data_footprint(model_cfg=run.model, data=test, memory_mb=run.memory_mb, dp=run.dp,
                          round_sites=run.strategy.sites_per_round(sites=sites, min_sites=run.min_sites),
                          secagg=run.secagg.enabled)
    for line in need.describe():
        log.info("test set: %s", line)
    problems = need.memory_problems(setting="memory_mb") + machine_problems(need_mb=run.memory_mb,
                                                                           what=f"memory_mb = {run.memory_mb}")
    if need.feature_bytes and not features_cached(model_cfg=run.model, data=test, cache_dir=run.cache_dir()):
        problems += disk_problems(folder=run.cache_dir(), need_bytes=need.feature_bytes,
                                  what="the front end's features of the test set")
    return problems


def resume_config(*, state: StateDir, which: str) -> RunConfig:
    """The interrupted run's own config (its config.json), pointed back at its directory."""
    path = Path(which)
    run_dir = path if path.is_dir() else state.runs / (which if which.startswith("run-") else f"run-{which}")
    problems = []
    if not (run_dir / "config.json").exists():
        problems.append(f"{run_dir}: no such run (fl-server status lists the runs)")
    elif (run_dir / "model.pt").exists():
        problems.append(f"{run_dir} finished: its model.pt is written; submit a new run instead")
    elif not any((run_dir / "checkpoints").glob("round-*.pt")):
        problems.append(f"{run_dir} has no checkpoint (it ended before its first round): submit it again")
    if problems:
        raise ConfigError(problems, source="fl-server run --resume")
    data = json.loads((run_dir / "config.json").read_text())
    data.update(output_dir=str(state.runs), resume_from=str(run_dir.resolve()))
    return parse(RunConfig, data, source=str(run_dir / "config.json"))


def interrupted_runs(state: StateDir, running: set[str]) -> list[tuple[str, int, int]]:
    """(run dir name, last checkpointed round, planned rounds) of every run that stopped before its end."""
    out = []
    for run_dir in sorted(state.runs.glob("run-*")):
        ckpts = sorted(run_dir.glob("checkpoints/round-*.pt"))
        if run_dir.name in running or (run_dir / "model.pt").exists() or not ckpts:
            continue
        try:
            planned = int(json.loads((run_dir / "config.json").read_text()).get("rounds", 0))
        except (OSError, ValueError):
            continue
        out.append((run_dir.name, int(ckpts[-1].stem.split("-")[1]), planned))
    return out


def run_headline(cfg: RunConfig) -> list[str]:
    """The run in a few lines: rounds, data, privacy, and every setting that differs from fedhaven's defaults."""
    from fedhaven.shared.config import flatten

    ours, defaults = flatten(to_dict(cfg)), flatten(to_dict(RunConfig()))
    changed = [f"{k}={v}" for k, v in ours.items() if k not in ("output_dir", "resume_from") and defaults.get(k) != v]
    dp = (f"DP epsilon <= {cfg.dp.target_epsilon:g} per site at delta {cfg.dp.delta:g}" if cfg.dp.enabled
          else "DP OFF")
    out = [f"run: {cfg.rounds} rounds on {cfg.data.source} data, model {cfg.model.name}, {dp}, "
           f"SecAgg+ {'on' if cfg.secagg.enabled else 'OFF'}"]
    line = "not default:"
    for item in changed:
        if len(line) + len(item) > 110:
            out.append(line)
            line = "            "
        line += f" {item}"
    return [*out, line] if changed else out


def result_document(*, run_id: int, run_dir: Path, status: str, details: str = "", ok: bool | None = None
                    ) -> dict[str, Any]:
    """`fl-server run --json`: the run's final result from its directory (metrics.jsonl, privacy.json,
    tracking.json); JSON without infinities (an epsilon that is not finite is null, with `private` false)."""
    from fedhaven.server.records import finite_or_none, read_rounds
    from fedhaven.server.tracking import TENSORBOARD_DIR, TRACKING_FILE

    rounds = read_rounds(run_dir)
    done = [r for r in rounds if r.status == "ok"]
    last = done[-1] if done else None
    privacy = read_json_object(run_dir / "privacy.json")
    tracking = read_json_object(run_dir / TRACKING_FILE)
    files = {name: str(run_dir / name) for name in ("model.pt", "privacy.json", "privacy.md", "metrics.jsonl",
                                                    "metrics.csv", "accuracy.png", "epsilon.png")
             if (run_dir / name).exists()}
    return {
        "ok": (status == "completed" and bool(done)) if ok is None else ok,
        "command": "fl-server run",
        "run_id": run_id,
        "run_dir": str(run_dir),
        "status": status,
        "details": details,
        "rounds_trained": len({r.round for r in done}),
        "rounds_rejected": sum(r.status == "rejected" for r in rounds),
        "final_accuracy": finite_or_none(last.accuracy) if last else None,
        "final_loss": finite_or_none(last.loss) if last else None,
        "private": privacy.get("private"),
        "epsilon_max": privacy.get("epsilon_max"),
        "epsilon_per_site": {name: row.get("epsilon") for name, row in (privacy.get("sites") or {}).items()},
        "stopped": privacy.get("stopped"),
        "files": files,
        "mlflow": tracking or None,
        "tensorboard": str(run_dir / TENSORBOARD_DIR) if (run_dir / TENSORBOARD_DIR).exists() else None,
    }


def result_lines(run_dir: Path) -> list[str]:
    """The end of a followed run in a few lines: accuracy, privacy, where the report and the tracking are."""
    doc = result_document(run_id=0, run_dir=run_dir, status="")
    acc = doc["final_accuracy"]
    out = [f"test accuracy  {100 * acc:.2f}% after {doc['rounds_trained']} round(s)" if acc is not None
           else "test accuracy  n/a (no round trained)"]
    eps = doc["epsilon_max"]
    privacy = (f"epsilon <= {eps:.3f} per site" if eps is not None else
               "NOT PRIVATE (epsilon ∞)" if doc["private"] is False else "no site reported an epsilon")
    out.append(f"Privacy report: {privacy}; per site and how to recompute it in {run_dir / 'privacy.md'}")
    if doc["mlflow"]:
        out.append(f"tracking       MLflow {doc['mlflow'].get('tracking_uri')} (run {doc['mlflow'].get('run_id')}); "
                   f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return out



class _Follower:
    """Prints a run's new rounds (metrics.jsonl) and the coordinator's warnings about it (coordinator.log)."""

    def __init__(self, run_dir: Path, planned: int) -> None:
        self.run_dir, self.planned = run_dir, planned
        self.bar = ProgressBar(planned=planned)
        self.seen = {"metrics.jsonl": _lines(run_dir / "metrics.jsonl"), RUN_LOG: _lines(run_dir / RUN_LOG)}

    def poll(self) -> None:
        for raw in self._new("metrics.jsonl"):
            try:
                print_round(log, json.loads(raw), planned=self.planned, bar=self.bar)
            except (ValueError, KeyError):
                continue
        for raw in self._new(RUN_LOG):
            level, message = run_log_fields(raw)
            if level in ("WARNING", "ERROR", "CRITICAL"):
                log.warning("coordinator: %s %s", level, message)

    def _new(self, name: str) -> list[str]:
        path = self.run_dir / name
        lines = path.read_text().splitlines() if path.exists() else []
        new, self.seen[name] = lines[self.seen[name]:], len(lines)
        return new


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    rt = Runtime.load(state)
    if rt is None or not pid_alive(rt.pid):
        raise RuntimeError(f"no coordinator is running from {state.root}; start it with `fl-server start`")
    if args.resume:
        if args.config is not None or args.overrides or args.rounds is not None:
            raise ConfigError(["--resume continues a run with its own settings: give no config file, overrides "
                               "or --rounds"], source="fl-server run")
        cfg = resume_config(state=state, which=args.resume)
    elif args.config is None:
        raise ConfigError(["a run config file is required (or --resume RUN)"], source="fl-server run")
    else:
        active = sum(1 for r in state.sites().values() if r.status != "revoked")
        remembered = CheckedRuns(state.root / CHECKED_FILE) if state.config().latency else None  # a latency shim
        cfg = load_run_config(path=args.config, overrides=args.overrides, rounds=args.rounds, output_dir=state.runs,
                              checked=remembered, sites=active)
    if not cfg.dp.enabled:
        log.warning("WARNING: differential privacy is OFF for this run (sites with require_dp will refuse)")
    if not cfg.secagg.enabled:
        log.warning("WARNING: secure aggregation is OFF for this run (sites requiring it will refuse)")
    if args.show_config:
        log.info("effective run configuration:\n%s", tomli_w.dumps(to_dict(cfg)))
    else:
        for line in run_headline(cfg):
            log.info("%s", line)
    app_dir = write_app_dir(run=cfg)
    control = control_for(state)
    try:
        run_id = control.start_run(app_dir=app_dir)
        shutil.rmtree(app_dir, ignore_errors=True)
        run_dir = Path(cfg.resume_from) if cfg.resume_from else state.runs / f"run-{run_id}"
        log.info("run %d submitted; results in %s%s", run_id, run_dir,
                 " (resuming the interrupted run there)" if cfg.resume_from else "")
        if args.detach:
            if args.json:
                print_json(result_document(run_id=run_id, run_dir=run_dir, status="submitted", ok=True))
            return 0
        follower = _Follower(run_dir, cfg.rounds)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while True:
            status = control.run(run_id)
            follower.poll()
            if status.finished:
                follower.poll()
                break
            if deadline is not None and time.monotonic() > deadline:
                log.warning("stopped following run %d after %.0f s; it goes on (fl-server status)", run_id,
                            args.timeout)
                if args.json:
                    print_json(result_document(run_id=run_id, run_dir=run_dir, status="running"))
                return 1
            time.sleep(0.25)  # a local Unix-socket call: cheap, and the run's end shows at once
    finally:
        control.close()
    log.info("run %d finished: %s%s", run_id, status.sub_status, f" ({status.details})" if status.details else "")
    report = run_dir / "privacy.md"
    if report.exists():
        if args.verbose:
            log.info("\n%s", report.read_text())
        else:
            for line in result_lines(run_dir):
                log.info("%s", line)
    rounds = _rounds_trained(run_dir)
    failed = status.sub_status != "completed" or rounds == 0
    if status.sub_status == "completed" and rounds == 0:  # never a success: nothing was trained
        log.error("run %d aggregated no round: see the site failures above", run_id)
    if args.json:
        print_json(result_document(run_id=run_id, run_dir=run_dir, status=status.sub_status,
                                   details=status.details, ok=not failed))
    return 1 if failed else 0


def _rounds_trained(run_dir: Path) -> int:
    """Rounds that produced an aggregate, from the run's metrics.jsonl."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    return len({r["round"] for r in map(json.loads, filter(str.strip, metrics.read_text().splitlines()))
                if r.get("status") == "ok"})
