"""The one data statistic a site may share, by its own policy: a differentially private class histogram.

Gaussian mechanism: each class count gets independent Gaussian noise of standard
deviation `policy.class_histogram_noise` (sigma). Adding or removing one image
changes one count by one, so the L2 sensitivity is 1 and the release is one step
of the subsampled Gaussian with sample rate 1 and noise multiplier sigma: exactly
what the site's accountant already composes with its training. The release is a
ledger entry of kind "statistic" (written, fsync'd and anchored before anything
is sent), so it counts against `policy.max_epsilon`, and `fl-client ledger
verify` recomputes its epsilon like any update's. Off by default; with the site
budget too small to pay for it, nothing is shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedhaven.client.ledger import STATISTIC, Ledger, LedgerEntry
from fedhaven.client.policy import budget_spent, over_budget
from fedhaven.client.site_config import SitePolicy
from fedhaven.shared.accounting import PrivacyHistory

if TYPE_CHECKING:
    from flwr.app import Message

    from fedhaven.client.types import SiteInfo
    from fedhaven.shared.data import ImageData

log = logging.getLogger("fedhaven.client")

#: The reply metric that carries the histogram (a JSON object, class name -> noisy count).
HISTOGRAM_METRIC = "class_histogram"
#: The ledger entry's `model` field for this release (what was shared, in place of a model name).
HISTOGRAM_MODEL = "class-histogram"


@dataclass(frozen=True)
class SharedHistogram:
    """What was released (noisy counts, rounded: post-processing) and the ledger entry that paid for it."""

    counts: dict[str, float]
    entry: LedgerEntry

    def as_metric(self) -> str:
        return json.dumps(self.counts, sort_keys=True, separators=(",", ":"))


def statistic_step(policy: SitePolicy) -> PrivacyHistory:
    """The release as the accountant sees it: one Gaussian step at noise multiplier sigma, sample rate 1."""
    return PrivacyHistory().add(noise_multiplier=policy.class_histogram_noise, sample_rate=1.0, steps=1)


def shared_in_run(entries: list[LedgerEntry], run_id: int) -> bool:
    """Whether this site already shared its histogram in run `run_id` (once per run)."""
    return any(e.kind == STATISTIC and e.run_id == run_id for e in entries)


def release_class_histogram(*, ledger: Ledger, policy: SitePolicy, site: str, counts: dict[str, int], run_id: int,
                            entries: list[LedgerEntry], rng: np.random.Generator | None = None
                            ) -> SharedHistogram | None:
    """Noise `counts`, record the release in `ledger`, return it; None when the policy does not opt in, the run
    already has this site's histogram, or the site's budget cannot pay for it (logged).

    Call it under the ledger's lock with `entries` as read under it (the ClientApp's ledger mod does).
    """
    if not policy.share_class_histogram or shared_in_run(entries, run_id):
        return None
    from fedhaven.client.ledger import budget_history

    history = budget_history(entries)
    after = history.extend(statistic_step(policy))
    why = over_budget(policy=policy, history=history, history_after=after)
    if why:
        log.warning("site %s: class histogram not shared: %s", site, why)
        return None
    before_eps = budget_spent(policy=policy, history=history)
    after_eps = budget_spent(policy=policy, history=after)
    gen = rng if rng is not None else np.random.default_rng()
    noisy = {name: round(float(n + gen.normal(0.0, policy.class_histogram_noise)), 1) for name, n in counts.items()}
    digest = hashlib.sha256(json.dumps(noisy, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    entry = ledger.append(
        site=site, run_id=run_id, server_round=0, model=HISTOGRAM_MODEL, update_sha256=digest,
        num_examples=0, noise_multiplier=policy.class_histogram_noise, sample_rate=1.0, steps=1,
        delta=policy.delta, accountant=policy.accountant, kind=STATISTIC,
        reason=f"class histogram shared with the coordinator (Gaussian mechanism, sigma "
               f"{policy.class_histogram_noise:g} images per count, L2 sensitivity 1; policy.share_class_histogram)",
        epsilon_before=_finite(before_eps), epsilon_after=_finite(after_eps), cumulative_epsilon=_finite(after_eps))
    log.info("site %s: shared a class histogram (epsilon %.4f at delta %g, ledger seq %d)", site,
             after_eps - before_eps, policy.delta, entry.seq)
    return SharedHistogram(counts=noisy, entry=entry)


def share_in_reply(*, reply: Message, ledger: Ledger, info: SiteInfo, data: ImageData, run_id: int) -> None:
    """The ClientApp's hook, in a training reply the ledger already recorded (under the ledger's lock): the site's
    noisy class histogram as the reply's `class_histogram` metric, the first time in a run, if its policy opts in.
    Metrics travel beside the (masked) update: the histogram is protected by its own noise, not by SecAgg+."""
    from fedhaven.client.seam import legacy

    shared = release_class_histogram(ledger=ledger, policy=info.policy, site=info.name, counts=data.class_counts(),
                                     run_id=run_id, entries=ledger.entries())
    if shared is not None:
        legacy.set_fit_metric(reply=reply, key=HISTOGRAM_METRIC, value=shared.as_metric())


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x
