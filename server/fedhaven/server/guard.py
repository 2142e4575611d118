"""The coordinator's guard against a broken or malicious site ([robust]), in plain numpy: no Flower import.

Without SecAgg+ it sees each site's update: a non-finite or ill-shaped one is rejected (the site and
the reason recorded; the model never sees it) and every delta is clipped to the bound honest sites
keep. Under SecAgg+ it sees only the aggregate of rotated deltas, each clipped per coordinate by
SecAgg+ (so that a site following the protocol contributes at most `coordinate_clip` times the bound in
L2 norm, whatever it trained): it rejects the round when the aggregate is not finite or is larger than
sites following the protocol can produce (a NaN or a tampered client), clips it to the bound when it
exceeds what honest sites produce (every honest delta is within the bound, so their weighted mean is
too) and rejects it when it would raise the held-out loss past `loss_factor` times the current
model's; a rejected round keeps the previous model. Which site broke a masked round cannot be known.
The bound follows the honest deltas (`robust.adaptive`): each round's is `adaptive_factor` times the
median delta norm of the round before (measured without SecAgg+, reported by DP sites under it), never
above the configured one; a minority of sites lying about their norm cannot move a median far.
`flower_legacy.GuardedStrategy` calls it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhaven.server.failures import RoundFailed, SiteFailure
from fedhaven.shared.schema import RunConfig, auto_update_norm
from fedhaven.shared.updates import (
    add,
    clip_l2,
    coordinate_range,
    decode_delta,
    l2_norm,
    nonfinite,
    num_params,
    padded_length,
    shape_problems,
)

log = logging.getLogger("fedhaven.server")
Evaluator = Callable[[Sequence[np.ndarray]], tuple[float, float]]
#: Relative slack of the aggregate's norm check: SecAgg+'s stochastic quantisation and float32 rounding.
NORM_SLACK = 1e-3
#: The fewest delta norms (sites) a round's median needs before the next round's bound follows it.
MIN_NORMS = 3


class RoundsRejected(RoundFailed):
    """`robust.max_rejected` rounds in a row were rejected: the run stops with an error, never as a success."""


@dataclass
class RoundVerdict:
    """What the guard decided in one round: the round's rejection (None: accepted), sites whose update was
    rejected or clipped, and the aggregate's delta norm against the bound."""

    server_round: int
    rejected: str | None = None
    site_rejections: list[str] = field(default_factory=list)
    clipped_sites: list[str] = field(default_factory=list)
    update_norm: float | None = None  # the aggregate's delta, before the guard clipped it to the bound
    bound: float | None = None  # this round's L2 bound on a site's delta
    site_norms: list[float] = field(default_factory=list)  # each site's delta norm, measured (no SecAgg+ only)
    padding_norm: float | None = None
    aggregate_clipped: bool = False
    loss_before: float | None = None
    loss_after: float | None = None


class CachedEvaluator:
    """The coordinator's held-out evaluation, remembering the last few models it scored (the guard's loss check
    and the round's record evaluate the same model once)."""

    def __init__(self, evaluate: Evaluator, *, keep: int = 4) -> None:
        self._evaluate = evaluate
        self._cache: dict[str, tuple[float, float]] = {}
        self._keep = keep
        self.seconds = 0.0  # spent scoring, wherever it happened (the round's record reports it as evaluation)

    @staticmethod
    def fingerprint(weights: Sequence[np.ndarray]) -> str:
        h = hashlib.sha256()
        for a in weights:
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def __call__(self, weights: Sequence[np.ndarray]) -> tuple[float, float]:
        key = self.fingerprint(weights)
        if key not in self._cache:
            if len(self._cache) >= self._keep:
                self._cache.pop(next(iter(self._cache)))
            t = time.perf_counter()
            self._cache[key] = self._evaluate(weights)
            self.seconds += time.perf_counter() - t
        return self._cache[key]


class UpdateGuard:
    """The [robust] decisions of one run; `enabled = false` passes everything through (today's Flower)."""

    def __init__(self, *, run: RunConfig, initial: Sequence[np.ndarray], evaluator: Evaluator | None = None,
                 max_weight: float | None = None) -> None:
        r = run.robust
        self.coordinate_clip = r.coordinate_clip
        self.max_weight = max_weight  # SecAgg+'s: a site's weight is its example count / max_weight
        self.enabled = r.enabled
        self.secure_aggregation = run.secagg.enabled
        self.num_params = num_params(initial)
        #: the configured bound: the adaptive one never exceeds it, and round 1 (or a resumed run's first) uses it
        self.max_bound = (auto_update_norm(self.num_params) if r.max_update_norm == "auto"
                          else float(r.max_update_norm))
        self.adaptive, self.adaptive_factor = r.adaptive, r.adaptive_factor
        self.bound = self.max_bound  # this round's
        self._last_norms: list[float] = []  # the previous round's delta norms (what the bound follows)
        if not r.enabled:
            self.encoding = "weights"
        else:
            self.encoding = "rotated" if run.secagg.enabled and r.rotate else "delta"
        self._length = padded_length(self.num_params) if self.encoding == "rotated" else self.num_params
        self.loss_factor, self.loss_slack = r.loss_factor, r.loss_slack
        self.max_rejected = r.max_rejected
        self.evaluator = evaluator
        self._seed = secrets.randbits(40)  # public per round; randomness only keeps rotations unrelated
        self.verdict = RoundVerdict(server_round=0)
        self.consecutive_rejections = 0
        self._testing = False  # inside `test_sum`: rejections are a search's verdicts, not the round's

    @property
    def coordinate_range(self) -> float | None:
        """SecAgg+'s per-coordinate clipping range for this round's deltas (None: Flower's, for full weights)."""
        if not (self.enabled and self.secure_aggregation):
            return None
        return coordinate_range(bound=self.bound, length=self._length, factor=self.coordinate_clip)

    def next_bound(self) -> float:
        """The bound of the coming round: `adaptive_factor` times the median of the last round's delta norms (at
        least MIN_NORMS of them), never above the configured bound; the configured bound without them."""
        norms = self._last_norms
        if not self.adaptive or len(norms) < MIN_NORMS:
            return self.max_bound
        median = float(np.median(norms))
        return min(self.max_bound, self.adaptive_factor * median) if median > 0 else self.max_bound

    def observe_norms(self, reported: Sequence[float]) -> None:
        """Close the round's view of honest deltas: the norms the guard measured itself (no SecAgg+), else those
        the sites reported (the norm of their DP-released delta). Negative or non-finite reports are ignored; a
        round without enough of them leaves the last round's norms in force."""
        norms = list(self.verdict.site_norms) or [v for v in reported if math.isfinite(v) and v >= 0]
        if len(norms) >= MIN_NORMS:
            self._last_norms = norms

    # --- what sites are asked to do ------------------------------------------------------------------------
    def rotation_seed(self, server_round: int) -> int:
        return self._seed + server_round

    def task_fields(self, server_round: int) -> dict[str, Any]:
        """The [robust] part of a round's task (see `TaskSpec`): bound, encoding and rotation seed."""
        if not self.enabled:
            return {}
        return {"update_norm": self.bound, "encoding": self.encoding,
                "rotation_seed": self.rotation_seed(server_round)}

    # --- one round ------------------------------------------------------------------------------------------
    def begin(self, server_round: int) -> RoundVerdict:
        self.bound = self.next_bound()
        self.verdict = RoundVerdict(server_round=server_round, bound=self.bound if self.enabled else None)
        if self.enabled and self.bound < self.max_bound:
            # behind --verbose: one line per round is the round's own (the bound is in metrics.jsonl, update_bound)
            log.debug("round %d: delta bound %.4g (%.3g x the median site delta norm of the round before; "
                     "configured %.4g)", server_round, self.bound, self.adaptive_factor, self.max_bound)
        return self.verdict

    def reject(self, reason: str) -> None:
        self.verdict.rejected = reason
        if not self._testing:
            log.error("round %d rejected: %s", self.verdict.server_round, reason)

    def test_sum(self, *, sent: Sequence[np.ndarray], global_weights: Sequence[np.ndarray],
                 weights: Sequence[float]) -> str | None:
        """Why a re-masked subgroup's unmasked sum (with its sites' weights) would be rejected, by the same checks as
        the round's own (`aggregate`, `check_result`); None when it passes. The round's verdict is left as it was."""
        saved, self._testing = self.verdict, True
        self.verdict = RoundVerdict(server_round=saved.server_round, bound=saved.bound)
        try:
            new = self.aggregate(sent=sent, global_weights=global_weights, weights=weights)
            if new is not None:
                self.check_result(new=new, global_weights=global_weights)
            return self.verdict.rejected
        finally:
            self.verdict, self._testing = saved, False

    def site_update(self, *, site: str, sent: Sequence[np.ndarray],
                    global_weights: Sequence[np.ndarray]) -> list[np.ndarray] | None:
        """One site's update in the clear (no SecAgg+): its new weights, the delta clipped to the bound; or None,
        the site and reason recorded, when it is ill-shaped or not finite."""
        problems = shape_problems(sent, global_weights, encoding=self.encoding)
        bad = None if problems else nonfinite(sent)
        if problems or bad:
            why = "; ".join(problems) if problems else bad
            self.verdict.site_rejections.append(f"{site}: update rejected ({why}); the model never saw it")
            log.warning("round %d: %s's update rejected: %s", self.verdict.server_round, site, why)
            return None
        delta, _ = decode_delta(sent, global_weights, encoding=self.encoding, seed=self.rotation_seed(
            self.verdict.server_round))
        clipped, norm = clip_l2(delta, self.bound)
        self.verdict.site_norms.append(norm)
        if norm > self.bound * (1 + NORM_SLACK):
            self.verdict.clipped_sites.append(f"{site} (delta norm {norm:.4g})")
        return add(global_weights, clipped)

    def protocol_limit(self, weights: Sequence[float]) -> float:
        """The largest aggregate delta norm sites that follow SecAgg+ can produce, honest or not: each adds its
        weighted, per-coordinate clipped vector (L2 norm <= coordinate_clip * bound) and the sum is divided by the
        sum of their weights (example count / max_weight)."""
        total = sum(w / self.max_weight for w in weights) if self.max_weight else len(weights)
        return self.coordinate_clip * self.bound * len(weights) / max(total, 1e-12)

    def aggregate(self, *, sent: Sequence[np.ndarray], global_weights: Sequence[np.ndarray],
                  weights: Sequence[float]) -> list[np.ndarray] | None:
        """The sites' unmasked aggregate (SecAgg+) with their weights (example counts, in the clear): the new
        weights it makes, or None with the round rejected."""
        problems = shape_problems(sent, global_weights, encoding=self.encoding)
        bad = None if problems else nonfinite(sent)
        if problems or bad:
            self.reject(f"the unmasked aggregate is not a model update ({'; '.join(problems) or bad}); the model "
                        f"of the previous round is kept")
            return None
        delta, padding = decode_delta(sent, global_weights, encoding=self.encoding,
                                      seed=self.rotation_seed(self.verdict.server_round))
        norm = math.hypot(l2_norm(delta), padding)
        self.verdict.update_norm, self.verdict.padding_norm = norm, padding
        limit = self.protocol_limit(weights)
        if norm > limit * (1 + NORM_SLACK):
            self.reject(f"the aggregate's delta has L2 norm {norm:.4g}, more than sites following SecAgg+ can "
                        f"produce ({limit:.4g}): some site sent a NaN or a tampered update, which one cannot be "
                        f"known under SecAgg+; the model of the previous round is kept")
            return None
        if norm > self.bound * (1 + NORM_SLACK):
            self.verdict.aggregate_clipped = True
            delta, _ = clip_l2(delta, self.bound)
            log.warning("round %d: the aggregate's delta norm %.4g is above the bound %.4g every honest site keeps: "
                        "clipped to it (some site ignored its bound)", self.verdict.server_round, norm, self.bound)
        return add(global_weights, delta)

    def check_result(self, *, new: Sequence[np.ndarray], global_weights: Sequence[np.ndarray]) -> bool:
        """Whether the round's new model may replace the global one: finite, and its held-out loss not past
        `loss_factor` times the current model's (nor, below `loss_slack` above it, counted as raised: a model
        near a held-out loss of zero may triple it with noise alone). Rejects the round (reason recorded) when not."""
        bad = nonfinite(new)
        if bad:
            self.reject(f"the aggregated model has {bad}; the model of the previous round is kept")
            return False
        if self.evaluator is None:
            return True
        before, _ = self.evaluator(global_weights)
        after, _ = self.evaluator(new)
        self.verdict.loss_before, self.verdict.loss_after = before, after
        limit = max(self.loss_factor * before, before + self.loss_slack)
        if not math.isfinite(after) or (math.isfinite(before) and after > limit):
            self.reject(f"the aggregated model's held-out loss {after:.4g} is above robust.loss_factor = "
                        f"{self.loss_factor:g} times the current model's {before:.4g} (and more than "
                        f"robust.loss_slack = {self.loss_slack:g} above it); the model of the previous round is kept")
            return False
        return True

    def end(self) -> RoundVerdict:
        """Close the round: count rejections in a row (RoundsRejected past `max_rejected`)."""
        v = self.verdict
        self.consecutive_rejections = self.consecutive_rejections + 1 if v.rejected else 0
        return v

    def stop_if_repeated(self, *, run_dir: object) -> None:
        if self.consecutive_rejections >= self.max_rejected:
            raise RoundsRejected(f"{self.consecutive_rejections} rounds in a row were rejected "
                                 f"(robust.max_rejected = {self.max_rejected}); last: {self.verdict.rejected}. The "
                                 f"model of the last accepted round is kept in {run_dir}",
                                 failures=(SiteFailure(self.verdict.rejected or ""),))
