"""What the coordinator records of a run, as plain frozen records: a site's report, a round, central DP's noise."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class SiteReport:
    """What one site reported for a round (its metrics, nothing else)."""

    site: str
    num_examples: int
    loss: float
    accuracy: float
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    total_steps: int
    train_time_s: float = 0.0
    # the L2 norm of the delta it sent (DP sites; NaN: none or garbage), as reported: what [robust]'s bound follows
    update_norm: float = math.nan


@dataclass(frozen=True)
class CentralNoise:
    """What the coordinator's central-DP noise was in one round: the mean of `sites` clipped updates.

    `noise_multiplier` is what is accounted: the mechanism's configured total. Under adaptive
    clipping Flower splits it (Andrew et al. 2021) into `value_noise_multiplier` on the update
    (std `noise_std` on the mean) and `count_noise_std` on the count of clipped sites.
    """

    server_round: int
    sites: int
    clipping_norm: float
    noise_multiplier: float
    noise_std: float
    value_noise_multiplier: float | None = None  # None: the same as noise_multiplier (fixed clipping)
    count_noise_std: float = 0.0


@dataclass(frozen=True)
class RoundRecord:
    """One line of metrics.jsonl."""

    round: int
    status: str  # "ok", "failed" (no aggregate), "rejected" (the [robust] guard kept the previous model), "initial"
    attempt: int
    loss: float | None
    accuracy: float | None
    epsilon_max: float | None
    epsilon_mean: float | None
    sites_ok: int
    sites_failed: int
    round_time_s: float
    fit_time_s: float
    eval_time_s: float
    secure_aggregation: bool
    sites_available: int = 0
    site_train_time_s: float = 0.0  # summed over the sites of the round: their local training loops only
    epsilons: dict[str, float | None] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    sites_rejected: int = 0  # sites whose update the [robust] guard rejected (counted in sites_failed too)
    time: float = field(default_factory=time.time)
    private: bool = True  # False: DP off, or some site's epsilon is infinite (epsilon_max is then written as null)
    unanswered: tuple[str, ...] = ()  # sites (or nodes) asked to train whose reply never came: they may have spent
    rejected: str | None = None  # status "rejected": why the [robust] guard kept the previous model
    update_norm: float | None = None  # [robust] under SecAgg+: L2 norm of the aggregate's model delta
    update_bound: float | None = None  # [robust]: the L2 bound every honest site keeps on its delta
    refusals: dict[str, int] = field(default_factory=dict)  # refusal code name (fedhaven.shared.refusal) -> sites
    located: tuple[str, ...] = ()  # [robust] under SecAgg+: sites found to break the sum (left out of the run)
    locate_groups: int = 0  # re-masked groups the search unmasked in this round
    locate_time_s: float = 0.0  # what the search added to the round
    locate_note: str | None = None  # how the search ended


def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: a non-private site's epsilon is written as null."""
    return None if x is None or not math.isfinite(x) else x


def read_rounds(run_dir: Path) -> list[RoundRecord]:
    """metrics.jsonl back as records (unknown keys ignored, a torn or incomplete line skipped)."""
    names = {f.name for f in fields(RoundRecord)}
    out = []
    path = run_dir / "metrics.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        rec = {k: v for k, v in raw.items() if k in names}
        for key in ("failures", "unanswered"):
            rec[key] = tuple(rec.get(key) or ())
        rec["epsilons"] = {k: (math.inf if v is None else v) for k, v in (rec.get("epsilons") or {}).items()}
        try:
            out.append(RoundRecord(**rec))
        except TypeError:  # a line missing a field (written over, or by hand) is skipped like a torn one
            continue
    return out
