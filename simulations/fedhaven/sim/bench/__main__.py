"""`python -m fedhaven.sim.bench [--quick]`: run every benchmark, then write BENCHMARKS.md, JSON and plots."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedhaven.shared.runtime import configure_logging, harden_environment

harden_environment()

ROOT = Path(__file__).resolve().parents[4]

QUICK: dict[str, Any] = {
         "dp_epochs": 2, "mask_repeats": 2, "secagg_sites": [5, 10], "secagg_rounds": 3, "secagg_epochs": 0.25,
         "baseline_rounds": 2, "accuracy": None, "scale_sites": [100], "scale_rounds": 2, "deploy_rounds": 3,
         "robustness": None, "large_images": None}
FULL: dict[str, Any] = {
        "dp_epochs": 5, "mask_repeats": 5, "secagg_sites": [5, 10, 20], "secagg_rounds": 5, "secagg_epochs": 1.0,
        "baseline_rounds": 15, "accuracy": {"epsilons": (1.0, 3.0, 8.0), "partitions": ("iid", "dirichlet:0.3"),
                                            "repeats": 3},
        "scale_sites": [100, 1000], "scale_rounds": 3, "deploy_rounds": 4,
        # 44 five-round simulations, one per cell; finished cells are kept in bench-results/ and skipped on a rerun
        "robustness": {"rounds": 5},
        # hospital-size images: 10 sites x 2,000 224x224 RGB images, plus twice that for memory (about an hour)
        "large_images": {"sites": 10, "per_site": 2000, "test": 2000, "lenet_rounds": 3}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhaven.sim.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the <10 minute subset (make bench-quick)")
    p.add_argument("--only", nargs="*", help="run only these sections (dp, masking, secagg, baseline, accuracy, "
                   "scale, deployment, robustness, large_images); earlier results of the same mode are kept for "
                   "the others")
    p.add_argument("--out", type=Path, default=ROOT, help="where BENCHMARKS.md goes (JSON and plots beside it, "
                   "under simulations/benchmarks/)")
    args = p.parse_args(argv)
    log = configure_logging()
    plan = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    data_dir = args.out / "simulations" / "benchmarks"
    data_dir.mkdir(parents=True, exist_ok=True)
    results_file = data_dir / f"results-{mode}.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if args.only and results_file.exists() else {}

    from fedhaven.sim.bench import accuracy, deploy, dp_cost, robustness, scale, secagg_cost
    from fedhaven.sim.bench.machine import machine_info
    from fedhaven.sim.bench.report import write_report

    results.update({"mode": mode, "plan": plan, "machine": machine_info(),
                    "command": f"make {'bench-quick' if args.quick else 'bench'}",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})

    def section(name: str, fn: Callable[[], Any]) -> None:
        if args.only and name not in args.only:
            return
        log.info("benchmark: %s ...", name)
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - record and go on: a failed section must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results.setdefault("section_seconds", {})[name] = time.perf_counter() - t
        results.setdefault("section_runs", {})[name] = {"date": results["date"],
                                                        "commit": results["machine"].get("commit")}
        results_file.write_text(json.dumps(results, indent=2, default=str))
        log.info("benchmark: %s done in %.0f s", name, time.perf_counter() - t)

    section("dp", lambda: dp_cost.run(epochs=plan["dp_epochs"]))
    section("masking", lambda: secagg_cost.masking_time(repeats=plan["mask_repeats"]))
    section("secagg", lambda: secagg_cost.round_times(sites=plan["secagg_sites"], rounds=plan["secagg_rounds"],
                                                      local_epochs=plan["secagg_epochs"]))
    section("baseline", lambda: _baseline(plan["baseline_rounds"]))
    if plan["accuracy"]:
        section("accuracy", lambda: accuracy.run(**plan["accuracy"]))
    section("scale", lambda: scale.run(sites=plan["scale_sites"], rounds=plan["scale_rounds"]))
    # fedhaven and plain Flower really deployed on loopback; every timestamped event goes to results-deploy.json
    section("deployment", lambda: deploy.run(rounds=plan["deploy_rounds"], raw_out=data_dir / "results-deploy.json",
                                             log=log.info))
    if plan["robustness"]:
        partial = ROOT / "bench-results" / f"robustness-{mode}.jsonl"
        partial.parent.mkdir(exist_ok=True)
        section("robustness", lambda: robustness.run(**plan["robustness"], partial=partial, log=log.info))
    if plan["large_images"]:
        from fedhaven.sim.bench import large_images

        work = ROOT / "bench-results" / "large-images"
        section("large_images", lambda: large_images.run(**plan["large_images"], work=work, log=log.info))
    md = write_report(results=results, out=args.out, data_dir=data_dir)
    log.info("wrote %s, %s and plots in %s", md, results_file, data_dir)
    return 0


def _baseline(rounds: int) -> dict[str, Any]:
    """fedhaven (DP + SecAgg+) and the plain Flower + Opacus app, same task, measured one after the other."""
    from fedhaven.shared.accounting import noise_for_budget
    from fedhaven.shared.training import schedule
    from fedhaven.sim.bench import baseline
    from fedhaven.sim.bench.simruns import simulate

    q, steps = schedule(num_examples=6000, batch_size=512, local_epochs=1.0)
    z = noise_for_budget(target_epsilon=3.0, delta=1e-5, sample_rate=q, steps=steps * 15)  # the default run's noise
    task = baseline.BaselineTask(sites=10, rounds=rounds, batch_size=512, lr=1.0, momentum=0.9, local_epochs=1,
                                 noise_multiplier=z, max_grad_norm=1.0)
    from fedhaven.sim.bench.accuracy import RECIPES

    # the plain app trains the seed's LeNet: fedhaven runs the same model and settings (the old recipe), not its default
    ours = simulate(overrides=[*RECIPES["old"], f"rounds={rounds}", f"dp.noise_multiplier={z}",
                               "dp.target_epsilon=100.0"])
    theirs = baseline.run(task)
    return {"noise_multiplier": z, "rounds": rounds, "fedhaven": ours, "flower_baseline": theirs,
            "wall_ratio": ours["wall_s"] / theirs["wall_s"],
            "steady_round_ratio": (ours["steady_round_s"] / theirs["steady_round_s"]
                                   if ours["steady_round_s"] and theirs["steady_round_s"] else None)}


if __name__ == "__main__":
    raise SystemExit(main())
