"""Item 2: round time with and without SecAgg+ by number of sites; the client's masking time by model size."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from fedhaven.sim.bench.simruns import simulate


def round_times(*, sites: list[int], rounds: int, local_epochs: float) -> list[dict[str, Any]]:
    rows = []
    for n in sites:
        for secagg in (False, True):
            over = [f"sites={n}", f"min_sites={n}", f"rounds={rounds}", f"train.local_epochs={local_epochs}",
                    f"secagg.enabled={'true' if secagg else 'false'}"]
            rows.append({"sites": n, "secagg": secagg, **simulate(overrides=over)})
    for n in sites:
        plain = next(r for r in rows if r["sites"] == n and not r["secagg"])
        masked = next(r for r in rows if r["sites"] == n and r["secagg"])
        masked["ratio_to_plain"] = masked["steady_round_s"] / plain["steady_round_s"]
    return rows


def masking_time(*, sizes: tuple[int, ...] = (100_000, 1_000_000, 10_000_000), neighbours: int = 4,
                 repeats: int = 3) -> list[dict[str, Any]]:
    """The arithmetic Flower's secaggplus_mod does per site and round, timed on Flower's own functions.

    Quantise the weighted update, add the private mask, add or subtract one
    pairwise mask per neighbour (num_shares - 1 of them), take the modulus.
    """
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    rows = []
    rng = np.random.default_rng(0)
    for size in sizes:
        params = [rng.normal(0, 0.1, size).astype(np.float32)]
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            q = quantize(parameters_multiply(params, 0.5), 8.0, 2**22)
            q = factor_combine(2**21, q)
            dims = [a.shape for a in q]
            q = parameters_addition(q, pseudo_rand_gen(b"p" * 32, 2**32, dims))
            for k in range(neighbours):
                mask = pseudo_rand_gen(bytes([k]) * 32, 2**32, dims)
                q = parameters_addition(q, mask) if k % 2 else parameters_subtraction(q, mask)
            parameters_mod(q, 2**32)
            times.append(time.perf_counter() - t)
        rows.append({"parameters": size, "neighbours": neighbours, "median_s": statistics.median(times)})
    return rows
