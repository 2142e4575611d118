"""Simulations for the benchmarks: one fedhaven experiment, measured round by round, its run directory kept aside."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhaven.sim.bench.machine import PeakMemory
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.runner import run_experiment

if TYPE_CHECKING:
    from fedhaven.server.records import RoundRecord


def simulate(*, overrides: list[str], source: str = "mnist", workdir: Path | None = None) -> dict[str, Any]:
    """Run one experiment; per-round wall, fit, eval and site-training times, final accuracy, epsilon, peak memory."""
    exp = load_experiment(source=source, overrides=overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="fedhaven-bench-", dir=workdir))
    started = time.perf_counter()
    rounds: list[RoundRecord] = []
    with PeakMemory(cache_dir=exp.cache_dir()) as mem:
        summary = run_experiment(exp=exp, run_dir=run_dir, on_round=rounds.append)
    wall = time.perf_counter() - started
    done = [r for r in rounds if r.status == "ok"]
    steady = done[1:] or done  # the first round also starts Ray's workers
    return {
        "overrides": overrides, "sites": exp.sites, "rounds": len(done), "wall_s": wall,
        "first_round_s": done[0].round_time_s if done else None,
        "steady_round_s": statistics.median(r.round_time_s for r in steady) if steady else None,
        "steady_fit_s": statistics.median(r.fit_time_s for r in steady) if steady else None,
        "steady_eval_s": statistics.median(r.eval_time_s for r in steady) if steady else None,
        "steady_site_train_s": statistics.median(r.site_train_time_s for r in steady) if steady else None,
        "round_s": [r.round_time_s for r in done],
        "accuracy": summary.data["final_accuracy"], "accuracy_per_round": [r.accuracy for r in done],
        "epsilon_max": summary.data["epsilon_max"], "peak_memory_mib": mem.peak_mib,
        "peak_rss_total_mib": mem.peak_rss_total_mib, "largest_process_mib": mem.largest_process_mib,
        "per_process_mib": mem.per_process, "peak_cached_mib": mem.peak_cached_mib,
        "peak_rss_plus_cached_mib": mem.peak_rss_plus_cached_mib,
        "membership_auc": _auc(run_dir), "run_dir": str(run_dir),
    }


def _auc(run_dir: Path) -> float | None:
    import json

    try:
        auc: float | None = json.loads((run_dir / "privacy.json").read_text())["membership_inference"]["auc"]
        return auc
    except (OSError, KeyError, TypeError, ValueError):
        return None
