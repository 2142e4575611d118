"""`python -m fedhaven.sim.bench.deploy`: fedhaven and plain Flower deployed on loopback, measured side by side.

One invocation deploys, one after the other on this machine, with the same data (scikit-learn digits
split IID into the sites' IDX folders, written once by `fedhaven.sim.loopback` and read by both),
model (fedhaven's LeNet), local training and rounds (the run file of `fedhaven.sim.loopback`):

1. `flower`: plain Flower, message-API FedAvg, no DP, no SecAgg+;
2. `flower-secagg`: Flower's SecAgg+ example pattern, no DP;
3. `fedhaven-dp-secagg`: fedhaven with its defaults (DP + SecAgg+);
4. `fedhaven-dp`: fedhaven, DP without SecAgg+;
5. `fedhaven`: fedhaven without DP and SecAgg+ (the fair comparison with 1).

Both deployments use TLS, SuperNode authentication, runtime dependency installation disabled and no
telemetry. Per round: wall time (server side) and its breakdown (deploy_breakdown). Section "deployment"
of `python -m fedhaven.sim.bench`; run alone it writes the raw JSON and prints the Markdown section.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedhaven.shared.runtime import harden_environment
from fedhaven.sim.bench.deploy_breakdown import SECAGG_STAGES, analyse_run, parse_site_lines, ratios, round_ends

harden_environment()  # before anything imports flwr (telemetry and the update check are read at import)

ROOT = Path(__file__).resolve().parents[4]
SYSTEMS: dict[str, dict[str, Any]] = {
    "flower": {"label": "Flower, FedAvg (message API), no DP, no SecAgg+", "stages": ("train",)},
    "flower-secagg": {"label": "Flower, SecAgg+ example (legacy FedAvg), no DP", "stages": SECAGG_STAGES},
    "fedhaven-dp-secagg": {"label": "fedhaven, DP + SecAgg+ (defaults)", "stages": SECAGG_STAGES,
                           "dp": True, "secagg": True},
    "fedhaven-dp": {"label": "fedhaven, DP, no SecAgg+", "stages": ("train",), "dp": True, "secagg": False},
    "fedhaven": {"label": "fedhaven, no DP, no SecAgg+", "stages": ("train",), "dp": False, "secagg": False},
    # the same coordinator with its latency shims off (server.toml: latency = false): Flower's own timings
    "fedhaven-dp-secagg-latency-off": {"label": "fedhaven, DP + SecAgg+, latency shims off", "stages": SECAGG_STAGES,
                                       "dp": True, "secagg": True, "latency": False},
    "fedhaven-latency-off": {"label": "fedhaven, no DP, no SecAgg+, latency shims off", "stages": ("train",),
                             "dp": False, "secagg": False, "latency": False},
}
EPSILON_PER_DP_RUN = 3.0  # fedhaven's default target; sites count what earlier runs spent, so each run adds this


def fedhaven_run(*, rounds: int, sites: int, dp: bool, secagg: bool, target: float) -> str:
    """fedhaven's run file for one variant: the loopback federation's with the seed's LeNet (3 epochs, batch 64,
    lr 0.2, as the plain Flower apps train; SecAgg+ with 3 shares, threshold 2, max_weight 1000), DP at fedhaven's
    defaults."""
    from fedhaven.sim.loopback import LENET_TRAINING, run_toml

    return run_toml(rounds=rounds, min_sites=sites, dp=dp, secagg=secagg, target=target, training=LENET_TRAINING)


def flower_config(*, rounds: int, sites: int, data_dir: Path) -> dict[str, Any]:
    """The plain Flower apps' run config: the same local training and SecAgg+ parameters as fedhaven's run file."""
    import tomllib

    from fedhaven.shared.config import parse
    from fedhaven.shared.schema import RunConfig

    run = parse(RunConfig, tomllib.loads(fedhaven_run(rounds=rounds, sites=sites, dp=False, secagg=True,
                                                      target=EPSILON_PER_DP_RUN)), source="loopback run file")
    sa = run.secagg
    return {"rounds": rounds, "sites": sites, "data-dir": str(data_dir), "local-epochs": run.train.local_epochs,
            "batch-size": run.train.batch_size, "lr": run.train.lr, "num-shares": int(sa.num_shares),
            "reconstruction-threshold": int(sa.reconstruction_threshold), "max-weight": float(sa.max_weight),
            "timeout": sa.timeout, "clipping-range": sa.clipping_range, "quantization-range": sa.quantization_range,
            "modulus-range": sa.modulus_range}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _flwr_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return None


def code_under_test() -> dict[str, Any]:
    """Which fedhaven the `fl-server`/`fl-client` commands run: its checkout, commit, and uncommitted changes."""
    import subprocess

    import fedhaven.server

    root = Path(fedhaven.server.__file__).resolve().parents[3]

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"path": str(root), "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": None if status is None else bool(status)}


def analyse(name: str, trace: Any) -> dict[str, Any]:
    """One system's run: per-round breakdown, steady summary, and the raw events it came from."""
    handled = [h for site, lines in trace.site_lines.items() for h in parse_site_lines(site, lines)]
    ends = round_ends(trace.records)
    order = sorted(ends)
    if name.startswith("flower"):
        clients = [r for r in trace.records if r.get("kind") == "client"]
        train: dict[int, float] = {}
        for r in order[1:]:
            prev = ends[r - 1] if r - 1 in ends else float("-inf")
            xs = [c["train_s"] for c in clients if prev < c["enter"] <= ends[r] and c.get("train_s")]
            if xs:
                train[r] = sum(xs) / len(xs)
        waits = [r for r in trace.records if r.get("kind") == "wait"]
    else:
        clients, waits = [], []
        train = {int(r["round"]): r["site_train_time_s"] / max(1, r["sites_ok"]) for r in trace.records
                 if r.get("status") == "ok" and r.get("sites_ok")}
    out = analyse_run(ends=ends, messages=trace.messages, handled=handled, objects=trace.objects, clients=clients,
                      train_per_site=train, stage_names=SYSTEMS[name]["stages"])
    for row in out["rounds"]:
        prev = ends[row["round"] - 1]
        row["in_app_wait_s"] = (sum(w["end"] - w["start"] for w in waits if prev < w["start"] <= ends[row["round"]])
                                if waits else None)
    accuracy = [r.get("accuracy") for r in trace.records if r.get("kind") == "round" or r.get("status") == "ok"]
    return {"label": SYSTEMS[name]["label"], "run_id": trace.run_id, "status": trace.status,
            "details": trace.details[-1000:], "wall_s": trace.finished - trace.submitted,
            "final_accuracy": accuracy[-1] if accuracy else None,
            "failed_attempts": sum(r.get("status") == "failed" for r in trace.records), **out,
            "raw": {"run_id": trace.run_id, "submitted": trace.submitted, "finished": trace.finished,
                    "status": trace.status, "details": trace.details, "messages": trace.messages,
                    "objects": trace.objects, "site_lines": trace.site_lines, "records": trace.records}}


def reanalyse(raw: dict[str, Any]) -> dict[str, Any]:
    """The same results recomputed from a raw results file's events (after a change to the breakdown)."""
    from types import SimpleNamespace

    out = {**raw, "systems": {}}
    for name, sys_ in raw["systems"].items():
        if "raw" not in sys_:
            out["systems"][name] = sys_
            continue
        r = sys_["raw"]
        trace = SimpleNamespace(**{**r, "site_lines": {k: [tuple(x) for x in v] for k, v in r["site_lines"].items()}})
        out["systems"][name] = {**analyse(name, trace), "load_start": sys_.get("load_start"),
                                "load_end": sys_.get("load_end")}
    out["ratios"] = ratios({k: v for k, v in out["systems"].items() if "error" not in v})
    return out


def run(*, rounds: int = 4, sites: int = 3, systems: tuple[str, ...] = tuple(SYSTEMS), keep: Path | None = None,
        raw_out: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Deploy and measure `systems`; returns the results without raw events (those go to `raw_out`)."""
    from fedhaven.sim.bench.deploy_fedhaven import FedhavenDeployment
    from fedhaven.sim.bench.deploy_flower import FlowerDeployment
    from fedhaven.sim.loopback import DEFAULT_SITES

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    root = Path(tempfile.mkdtemp(prefix="fedhaven-bench-deploy-"))
    names = tuple(DEFAULT_SITES[:sites]) if sites <= len(DEFAULT_SITES) else tuple(f"site-{i}" for i in range(sites))
    res: dict[str, Any] = {"setup": {"rounds": rounds, "sites": sites, "data": "scikit-learn digits, IID split",
                                     "model": "fedhaven LeNet", "warmup_rounds": 1, "cores": os.cpu_count(),
                                     "epsilon_per_dp_run": EPSILON_PER_DP_RUN, "flwr": _flwr_version(),
                                     "fedhaven_under_test": code_under_test()},
                           "load_start": _load(), "systems": {}}
    timeout = 600 + 240 * rounds
    fed = FedhavenDeployment(root=root / "fedhaven", site_names=names)
    try:
        (root / "fedhaven").mkdir()
        fed.provision()  # keys, registrations and each site's data: the Flower sites read the very same files
        data = root / "data"
        data.mkdir()
        for i, d in enumerate(fed.data_dirs()):
            (data / f"site-{i}").symlink_to(d)
        cfg = flower_config(rounds=rounds, sites=sites, data_dir=data)
        res["setup"].update({"local_epochs": cfg["local-epochs"], "batch_size": cfg["batch-size"], "lr": cfg["lr"],
                             "secagg": {k: cfg[k] for k in ("num-shares", "reconstruction-threshold",
                                                            "max-weight", "timeout")},
                             "examples_per_site": [_count(d) for d in fed.data_dirs()]})

        def measure(name: str, fn: Callable[[], Any]) -> None:
            log(f"deployment: {name} ({rounds} rounds), load {_load()} ...")
            load0, t0 = _load(), time.perf_counter()
            try:
                trace = fn()
                res["systems"][name] = {**analyse(name, trace), "load_start": load0, "load_end": _load()}
                if not trace.status.endswith("completed"):  # measured what there was; no ratio from it
                    details = " / ".join(trace.details.splitlines())[:300]
                    res["systems"][name]["error"] = f"run ended {trace.status}: {details}"
            except Exception as exc:  # noqa: BLE001 - a failed system must not lose the others
                res["systems"][name] = {"label": SYSTEMS[name]["label"], "error": f"{type(exc).__name__}: {exc}"}
            s = res["systems"][name].get("summary", {})
            log(f"deployment: {name} done in {time.perf_counter() - t0:.0f} s, steady round "
                f"{s.get('round_mean_s')} s; {res['systems'][name].get('error', '')}")

        def deployment(prefix: str, dep: Any, runs: Callable[[], None]) -> None:
            wanted = [s for s in systems if s.startswith(prefix)]
            if not wanted:
                return
            try:
                dep.start()
                runs()
            except Exception as exc:  # noqa: BLE001 - e.g. it did not start: say so for each system it owed
                for name in wanted:
                    res["systems"].setdefault(name, {"label": SYSTEMS[name]["label"],
                                                     "error": f"deployment failed: {type(exc).__name__}: {exc}"})
            finally:
                dep.stop()

        flower = FlowerDeployment(root=root / "flower", data_dirs=fed.data_dirs())

        def flower_runs() -> None:
            for name, kind in (("flower", "plain"), ("flower-secagg", "secagg")):
                if name in systems:
                    measure(name, functools.partial(flower.run, kind=kind, config=cfg, timeout=timeout))

        def fedhaven_runs() -> None:
            dp_runs, latency = 0, True
            # A run without DP spends an infinite epsilon in the sites' ledgers, which the same sites keep for
            # every variant: every DP variant runs first, or a later one is refused for its budget.
            ordered = sorted((s for s in SYSTEMS if s.startswith("fedhaven") and s in systems),
                             key=lambda s: not SYSTEMS[s]["dp"])
            for name in ordered:
                spec = SYSTEMS[name]
                if spec.get("latency", True) != latency:  # the switch is the coordinator's: restart it
                    latency = spec.get("latency", True)
                    log(f"deployment: restarting the coordinator with latency = {str(latency).lower()}")
                    fed.restart_coordinator(latency=latency)
                dp_runs += spec["dp"]
                toml = fedhaven_run(rounds=rounds, sites=sites, dp=spec["dp"], secagg=spec["secagg"],
                                    target=EPSILON_PER_DP_RUN * max(1, dp_runs))
                measure(name, functools.partial(fed.measure, name=name, toml=toml, timeout=timeout))

        deployment("flower", flower, flower_runs)
        deployment("fedhaven", fed, fedhaven_runs)
    finally:
        fed.stop()  # a no-op when it never started or has stopped
        res["load_end"] = _load()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copytree(root, keep / root.name, dirs_exist_ok=True, symlinks=True,
                            ignore=shutil.ignore_patterns("*.sock"))
        shutil.rmtree(root, ignore_errors=True)
    res["ratios"] = ratios({k: v for k, v in res["systems"].items() if "error" not in v})
    if raw_out is not None:
        raw_out.parent.mkdir(parents=True, exist_ok=True)
        raw_out.write_text(json.dumps(res, indent=1, default=str))
    return strip_raw(res)


def _count(folder: Path) -> int:
    from fedhaven.shared.sources import load_idx

    return len(load_idx(folder, split="train"))


def strip_raw(res: dict[str, Any]) -> dict[str, Any]:
    """The results without raw events and per-message rows (they stay in the raw JSON)."""
    out = {**res, "systems": {}}
    for name, sys_ in res["systems"].items():
        s = {k: v for k, v in sys_.items() if k != "raw"}
        if "rounds" in s:
            s["rounds"] = [{k: v for k, v in r.items() if k != "messages"} for r in s["rounds"]]
        out["systems"][name] = s
    return out


def main(argv: list[str] | None = None) -> int:
    from fedhaven.sim.bench.deploy_report import section

    p = argparse.ArgumentParser(prog="python -m fedhaven.sim.bench.deploy", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4, help="rounds per run; the first is reported as warm-up")
    p.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--out", type=Path, default=ROOT / "simulations" / "benchmarks" / "results-deploy.json",
                   help="raw results (JSON, with every timestamped event)")
    p.add_argument("--keep", type=Path, help="copy the deployments' folders (logs, databases) here")
    p.add_argument("--reanalyse", type=Path, metavar="RAW_JSON", help="deploy nothing: recompute the breakdown "
                   "from the events in a raw results file and print the section")
    args = p.parse_args(argv)
    if args.reanalyse is not None:
        res = strip_raw(reanalyse(json.loads(args.reanalyse.read_text())))
        print("\n".join(section(res)))
        return 0
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (round 1 is the warm-up)")
    res = run(rounds=args.rounds, systems=tuple(args.systems), keep=args.keep, raw_out=args.out)
    print("\n".join(section(res)))
    return 0 if all("error" not in s for s in res["systems"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
