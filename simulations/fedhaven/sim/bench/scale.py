"""Item 6: many simulated sites, 10% sampled per round: peak memory and round time as the federation grows."""

from __future__ import annotations

from typing import Any

from fedhaven.sim.bench.simruns import simulate


def run(*, sites: list[int], rounds: int) -> list[dict[str, Any]]:
    rows = []
    for n in sites:
        per_round = max(3, n // 10)
        over = [f"sites={n}", f"min_sites={per_round}", "strategy.fraction_fit=0.1", f"rounds={rounds}",
                "train.local_epochs=1.0", "train.batch_size=16", "secagg.num_shares=5",
                "secagg.reconstruction_threshold=3"]
        rows.append({"sites": n, "sampled_per_round": per_round, **simulate(overrides=over)})
    return rows
