"""Per-site privacy accounting over everything a site has ever trained, recomputable with a fresh Opacus accountant."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedhaven.shared.runtime import quiet_opacus_import
from fedhaven.shared.schema import Accountant

if TYPE_CHECKING:
    import numpy as np

#: Words of a site's refusals, for people (the coordinator acts on fedhaven.shared.refusal's codes, never on these):
#: its own budget (policy.max_epsilon) is spent; the run's target (dp.target_epsilon) is reached; nothing was sent.
BUDGET_SPENT = "privacy budget is spent"
RUN_TARGET_REACHED = "run's privacy target is reached"
NOTHING_SENT = "nothing was trained or sent"


@dataclass(frozen=True)
class PrivacyStep:
    """`steps` DP-SGD steps with one noise multiplier and one Poisson sample rate."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0 or not 0 < self.sample_rate <= 1 or self.steps < 0:
            raise ValueError(f"invalid privacy step {self}")


@dataclass(frozen=True)
class PrivacyHistory:
    """Every (noise, sample rate, steps) a site has trained with, in order; never reset."""

    steps: tuple[PrivacyStep, ...] = ()

    def add(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> PrivacyHistory:
        return PrivacyHistory((*self.steps, PrivacyStep(noise_multiplier, sample_rate, steps)))

    def extend(self, other: PrivacyHistory) -> PrivacyHistory:
        return PrivacyHistory((*self.steps, *other.steps))

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.steps)

    def as_opacus(self) -> list[tuple[float, float, int]]:
        """The history in Opacus' accountant format, runs of identical (noise, rate) merged."""
        merged: list[tuple[float, float, int]] = []
        for s in self.steps:
            if s.steps == 0:
                continue
            if merged and merged[-1][:2] == (s.noise_multiplier, s.sample_rate):
                merged[-1] = (s.noise_multiplier, s.sample_rate, merged[-1][2] + s.steps)
            else:
                merged.append((s.noise_multiplier, s.sample_rate, s.steps))
        return merged

    def to_columns(self) -> dict[str, list[float] | list[int]]:
        """Plain lists (one per field) for storage in a Flower record or JSON."""
        return {"noise_multiplier": [s.noise_multiplier for s in self.steps],
                "sample_rate": [s.sample_rate for s in self.steps],
                "steps": [s.steps for s in self.steps]}

    @classmethod
    def from_columns(cls, columns: dict[str, Sequence[float] | Sequence[int]]) -> PrivacyHistory:
        cols = [columns.get(k, []) for k in ("noise_multiplier", "sample_rate", "steps")]
        if len({len(c) for c in cols}) != 1:
            raise ValueError("privacy history columns have different lengths")
        return cls(tuple(PrivacyStep(float(z), float(q), int(n)) for z, q, n in zip(*cols, strict=True)))


def _accountant(kind: Accountant) -> Any:  # Any: Opacus' IAccountant (Opacus has no type information)
    quiet_opacus_import()
    from opacus.accountants import create_accountant

    return create_accountant(kind)


def epsilon(*, history: PrivacyHistory | Iterable[PrivacyStep], delta: float, accountant: Accountant = "rdp") -> float:
    """Epsilon at `delta` after the whole `history`, as a fresh Opacus accountant computes it.

    PRV: Opacus' PRVAccountant. RDP: Opacus' own RDP analysis summed exactly as `RDPAccountant` does
    (bitwise the same number), per-step RDP cached.

    Zero when nothing was trained; infinite when any step added no noise.
    """
    hist = history if isinstance(history, PrivacyHistory) else PrivacyHistory(tuple(history))
    entries = hist.as_opacus()
    if not entries:
        return 0.0
    if any(z == 0 for z, _, _ in entries):
        return math.inf
    if accountant == "rdp":
        return _rdp_epsilon(entries, delta)
    acc = _accountant(accountant)
    acc.history = list(entries)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=8192)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:  # read-only
    """Opacus' RDP of one sampled-Gaussian step at its default orders (multiplied by steps, it is exactly what
    `RDPAccountant` sums)."""
    quiet_opacus_import()
    from opacus.accountants.analysis import rdp as analysis
    from opacus.accountants.rdp import RDPAccountant

    out: np.ndarray = analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                           orders=RDPAccountant.DEFAULT_ALPHAS)
    out.setflags(write=False)  # shared by every caller
    return out


def _rdp_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    """`RDPAccountant(history=entries).get_epsilon(delta)`, the same arithmetic in the same order (bitwise equal,
    tested), with each (sample rate, noise) pair's per-step RDP computed once per process: a site's history
    grows every round and the noise search revisits the same values."""
    from opacus.accountants.analysis import rdp as analysis
    from opacus.accountants.rdp import RDPAccountant

    rdp = sum([_rdp_per_step(q, z) * n for z, q, n in entries])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def noise_for_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: PrivacyHistory = PrivacyHistory(),  # frozen, immutable default
    accountant: Accountant = "rdp",
    tolerance: float = 0.005,
) -> float:
    """The smallest noise multiplier (within `tolerance`) that keeps `prior` plus `steps` more steps at or under the
    target.

    Raises ValueError when the prior history has already reached the target. Memoised per process: the
    search costs a few seconds of accountant arithmetic, and simulated sites of equal size all ask
    the same question (at 1,000 sites it was most of a round).
    """
    return _noise_for_budget(float(target_epsilon), float(delta), float(sample_rate), int(steps), prior, accountant,
                             float(tolerance))


@functools.lru_cache(maxsize=256)
def _noise_for_budget(target_epsilon: float, delta: float, sample_rate: float, steps: int, prior: PrivacyHistory,
                      accountant: Accountant, tolerance: float) -> float:
    spent = epsilon(history=prior, delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise ValueError(f"epsilon {spent:.3f} already spent reaches the target {target_epsilon:g} (delta {delta:g}); "
                         f"nothing more can be trained under it")

    def eps_with(z: float) -> float:
        return epsilon(history=prior.add(noise_multiplier=z, sample_rate=sample_rate, steps=steps), delta=delta,
                       accountant=accountant)

    low, high = 0.0, 1.0
    while eps_with(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"no noise multiplier below 1e4 meets epsilon {target_epsilon:g}")
    while high - low > tolerance:
        mid = (low + high) / 2
        if eps_with(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
