"""Item 5: MNIST, 10 sites, IID and Dirichlet(0.3), at epsilon 1, 3 and 8 (delta 1e-5), beside published figures."""

from __future__ import annotations

from fedhaven.sim.bench.simruns import simulate

#: Centralised DP-SGD on MNIST with a small CNN, delta 1e-5 (published anchors, see PRODUCT.md).
PUBLISHED = {"non-private": 98.9, "eps ~7": 97.1, "eps ~3": 96.8, "eps ~1.2": "94.6-95.0"}


def run(*, epsilons: tuple[float, ...], partitions: tuple[str, ...], rounds: int) -> list[dict]:
    rows = []
    for part in partitions:
        for eps in epsilons:
            over = [f"partition={part}", f"dp.target_epsilon={eps}", f"rounds={rounds}"]
            rows.append({"partition": part, "target_epsilon": eps, **simulate(overrides=over)})
    return rows
