"""The guard's verdict on a re-masked subgroup sum: the same checks as the round's, without touching its verdict."""

from __future__ import annotations

import numpy as np

from fedhaven.server.guard import UpdateGuard
from fedhaven.shared.config import parse
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.updates import encode

START = [np.zeros((4, 3), dtype=np.float32), np.zeros(5, dtype=np.float32)]


def test_a_subgroup_sum_is_judged_like_the_round_and_the_round_verdict_is_kept():
    run = parse(RunConfig, {"min_sites": 3, "robust": {"max_update_norm": 1.0}})
    guard = UpdateGuard(run=run, initial=START, max_weight=100.0)
    verdict = guard.begin(1)
    guard.reject("the round's own reason")
    seed = guard.rotation_seed(1)
    honest = encode([a + np.float32(0.01) for a in START], START, encoding=guard.encoding, seed=seed)
    broken = [np.full_like(a, 1e6) for a in honest]
    assert guard.test_sum(sent=honest, global_weights=START, weights=[100, 100, 100]) is None
    why = guard.test_sum(sent=broken, global_weights=START, weights=[100, 100, 100])
    assert why is not None and "more than sites following SecAgg+ can produce" in why
    nan = [np.full_like(a, np.nan) for a in honest]
    assert "not a model update" in (guard.test_sum(sent=nan, global_weights=START, weights=[100] * 3) or "")
    assert guard.verdict is verdict and verdict.rejected == "the round's own reason" and verdict.update_norm is None
