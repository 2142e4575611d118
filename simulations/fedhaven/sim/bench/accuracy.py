"""Item 5: MNIST, 10 sites, IID and Dirichlet(0.3), epsilon 1, 3 and 8 (delta 1e-5): old and new recipe, 3 runs each.

`python -m fedhaven.sim.bench.accuracy --recipe new --partition iid --epsilon 3` runs chosen rows
and merges them into the full benchmark's results (then rewrites BENCHMARKS.md), so
the section can be filled a few rows at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from fedhaven.sim.bench.simruns import simulate

#: Centralised DP-SGD on MNIST with a small CNN, delta 1e-5 (published anchors, see PRODUCT.md).
PUBLISHED = {"non-private": 98.9, "eps ~7": 97.1, "eps ~3": 96.8, "eps ~1.2": "94.6-95.0"}

#: The recipes compared. "new" is the bundled default experiment as it is; "old" is the default before
#: the scattering front end (tanh LeNet, 15 rounds, expected batch 512, lr 1.0).
RECIPES: dict[str, list[str]] = {
    "new": [],
    "old": ["model.name=lenet", "model.activation=tanh", "train.recipe=manual", "rounds=15", "train.batch_size=512",
            "train.lr=1.0", "train.momentum=0.9", "train.local_epochs=1.0"],
}
RECIPE_NAMES = {"new": "scatternet + rule (default)", "old": "tanh LeNet, 15 rounds (before)"}


def _row(*, recipe: str, partition: str, eps: float, repeats: int) -> dict[str, Any]:
    over = [*RECIPES[recipe], f"partition={partition}", f"dp.target_epsilon={eps}"]
    # a different seed per run: the split, the initial model and the DP noise all change (one seed = one run)
    runs = [simulate(overrides=[*over, f"seed={i}"]) for i in range(repeats)]
    acc = [r["accuracy"] for r in runs]
    aucs = [r["membership_auc"] for r in runs if r.get("membership_auc") is not None]
    return {"recipe": recipe, "partition": partition, "target_epsilon": eps, "runs": len(runs),
            "accuracy_mean": statistics.fmean(acc), "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy_min": min(acc), "accuracy_max": max(acc), "accuracies": acc,
            "epsilon_max": max(r["epsilon_max"] for r in runs),
            "membership_auc_mean": statistics.fmean(aucs) if aucs else None,
            "membership_auc_max": max(aucs) if aucs else None,
            "rounds": runs[0]["rounds"], "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
            "overrides": over, "seeds": list(range(repeats))}


def run(*, epsilons: tuple[float, ...], partitions: tuple[str, ...], repeats: int = 3,
        recipes: tuple[str, ...] = ("new", "old")) -> list[dict[str, Any]]:
    """Every (recipe, partition, epsilon) row, each the mean and spread of `repeats` full simulations."""
    return [_row(recipe=rec, partition=part, eps=eps, repeats=repeats)
            for rec in recipes for part in partitions for eps in epsilons]


def _as_row(r: dict[str, Any]) -> dict[str, Any]:
    """A row of the earlier single-run format (the old recipe, measured before this section had repeats): n=1."""
    if "accuracy_mean" in r:
        return r
    a = r["accuracy"]
    return {"recipe": "old", "partition": r["partition"], "target_epsilon": r["target_epsilon"], "runs": 1,
            "accuracy_mean": a, "accuracy_sd": 0.0, "accuracy_min": a, "accuracy_max": a, "accuracies": [a],
            "epsilon_max": r["epsilon_max"], "membership_auc_mean": r.get("membership_auc"),
            "membership_auc_max": r.get("membership_auc"), "rounds": r.get("rounds"), "wall_s_mean": r.get("wall_s"),
            "overrides": r.get("overrides", [])}


def merge(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with each row of `new` replacing the one of the same recipe, partition and epsilon."""
    def key(r: dict[str, Any]) -> tuple[str, str, float]:
        return r.get("recipe", "old"), r["partition"], float(r["target_epsilon"])

    out = {key(r): _as_row(r) for r in rows}
    out.update({key(r): r for r in new})
    order = {"new": 0, "old": 1}
    return sorted(out.values(), key=lambda r: (order.get(r["recipe"], 2), r["partition"] != "iid", r["partition"],
                                               r["target_epsilon"]))


def main(argv: list[str] | None = None) -> int:
    from fedhaven.shared.runtime import configure_logging, harden_environment

    harden_environment()
    p = argparse.ArgumentParser(prog="python -m fedhaven.sim.bench.accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", nargs="+", default=["new"], choices=sorted(RECIPES))
    p.add_argument("--partition", nargs="+", default=["iid"])
    p.add_argument("--epsilon", nargs="+", type=float, default=[3.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[4],
                   help="repository root: BENCHMARKS.md and simulations/benchmarks/results-full.json")
    args = p.parse_args(argv)
    log = configure_logging()
    data_dir = args.out / "simulations" / "benchmarks"
    results_file = data_dir / "results-full.json"
    for rec in args.recipe:
        for part in args.partition:
            for eps in args.epsilon:
                log.info("accuracy: %s recipe, %s, epsilon %g, %d runs ...", rec, part, eps, args.repeats)
                row = _row(recipe=rec, partition=part, eps=eps, repeats=args.repeats)
                log.info("accuracy: %.2f%% +- %.2f (%s)", 100 * row["accuracy_mean"], 100 * row["accuracy_sd"],
                         ", ".join(f"{100 * a:.2f}" for a in row["accuracies"]))
                results = json.loads(results_file.read_text()) if results_file.exists() else {}
                acc = results.get("accuracy")
                results["accuracy"] = merge(acc if isinstance(acc, list) else [], [row])
                from fedhaven.sim.bench.machine import machine_info

                stamp = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "commit": machine_info().get("commit")}
                results.setdefault("section_runs", {})["accuracy"] = stamp
                data_dir.mkdir(parents=True, exist_ok=True)
                results_file.write_text(json.dumps(results, indent=2, default=str))
    if results_file.exists():
        from fedhaven.sim.bench.report import write_report

        results = json.loads(results_file.read_text())
        if "machine" in results and "mode" in results:
            write_report(results=results, out=args.out, data_dir=data_dir)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
