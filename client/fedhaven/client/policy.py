"""The site policy, enforced on the site: what a task may ask, and the noise and budget of each round.

Two limits hold for every round, retries included, checked before training:
the run's target (`dp.target_epsilon`, a setting of the run) and the site's own
budget (`policy.max_epsilon`). A refusal names the one that bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedhaven.client.site_config import SitePolicy
from fedhaven.shared.accounting import BUDGET_SPENT, RUN_TARGET_REACHED, PrivacyHistory, epsilon, noise_for_budget
from fedhaven.shared.recipe import expected_batch
from fedhaven.shared.refusal import Code, Refusal
from fedhaven.shared.task import TaskSpec

if TYPE_CHECKING:
    from fedhaven.shared.schema import Accountant


class BudgetRefused(RuntimeError):
    """A round the site will not train: it would pass the run's target or the site's own budget (`code` says
    which)."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def budget_spent(*, policy: SitePolicy, history: PrivacyHistory) -> float:
    """The site's cumulative epsilon at the policy's delta, over everything it trained in its current budget."""
    return epsilon(history=history, delta=policy.delta, accountant=policy.accountant)


def run_spent(*, task: TaskSpec, history: PrivacyHistory) -> float:
    """The site's cumulative epsilon at the run's delta and accountant (what the run's target limits)."""
    return epsilon(history=history, delta=task.dp.delta, accountant=task.dp.accountant)


def _site_left(policy: SitePolicy, history: PrivacyHistory) -> str:
    if not math.isfinite(policy.max_epsilon):
        return "this site sets no budget of its own (policy.max_epsilon)"
    left = max(0.0, policy.max_epsilon - budget_spent(policy=policy, history=history))
    return f"this site's own budget (policy.max_epsilon = {policy.max_epsilon:g}) has {left:.3f} left"


def run_target_refusal(*, task: TaskSpec, policy: SitePolicy, history: PrivacyHistory,
                       after: float | None = None) -> str:
    """Why the run's target stops this site: the run's setting, not the site's budget, and how to change it."""
    spent = run_spent(task=task, history=history)
    more = f"; another round would take it to {after:.3f}" if after is not None else ""
    return (f"the {RUN_TARGET_REACHED}: dp.target_epsilon = {task.dp.target_epsilon:g} (delta {task.dp.delta:g}) is "
            f"a setting of this run, and this site has spent epsilon {spent:.3f} across all runs{more}; "
            f"{_site_left(policy, history)}. The run's operator can raise dp.target_epsilon; refused before training")


def site_budget_refusal(*, policy: SitePolicy, history: PrivacyHistory, after: float | None = None) -> str:
    """Why the site's own budget stops it: its policy.max_epsilon, which no coordinator can change."""
    spent = budget_spent(policy=policy, history=history)
    if after is None:
        return (f"this site's own {BUDGET_SPENT}: epsilon {spent:.3f} of {policy.max_epsilon:g} "
                f"(policy.max_epsilon, delta {policy.delta:g}) across all runs; nothing more can be trained")
    return (f"this site's own {BUDGET_SPENT} for another round: it would take the site from epsilon {spent:.3f} to "
            f"{after:.3f}, past policy.max_epsilon = {policy.max_epsilon:g} (delta {policy.delta:g}); refused before "
            f"training")


def task_violations(*, task: TaskSpec, policy: SitePolicy, secure_aggregation: bool,
                    history: PrivacyHistory) -> list[Refusal]:
    """Every way `task` breaks `policy` that can be seen without the site's data, each with its code."""
    out = []
    if policy.require_secure_aggregation and not secure_aggregation:
        out.append(Refusal(Code.POLICY, "this site only sends updates under secure aggregation "
                           "(policy.require_secure_aggregation); the coordinator asked for plain training: enable "
                           "[secagg] on the coordinator"))
    if policy.require_dp and not task.dp.enabled:
        out.append(Refusal(Code.POLICY, "this site only trains with differential privacy (policy.require_dp); "
                           "enable [dp] on the coordinator"))
    if not policy.allows_model(task.model.name):
        out.append(Refusal(Code.POLICY, f"model {task.model.name!r} is not allowed here (policy.allowed_models = "
                           f"{list(policy.allowed_models)})"))
    if task.dp.enabled:
        if task.dp.noise_multiplier != "auto" and task.dp.noise_multiplier < policy.min_noise_multiplier:
            out.append(Refusal(Code.POLICY, f"noise multiplier {task.dp.noise_multiplier:g} is below this site's "
                               f"minimum {policy.min_noise_multiplier:g} (policy.min_noise_multiplier)"))
        if task.dp.delta > policy.delta:
            out.append(Refusal(Code.POLICY, f"delta {task.dp.delta:g} is weaker than this site's delta "
                               f"{policy.delta:g}"))
    if math.isfinite(policy.max_epsilon) and budget_spent(policy=policy, history=history) >= policy.max_epsilon:
        out.append(Refusal(Code.SITE_BUDGET, site_budget_refusal(policy=policy, history=history)))
    if task.dp.enabled and not task.dp.not_private and run_spent(task=task, history=history) >= task.dp.target_epsilon:
        out.append(Refusal(Code.RUN_TARGET, run_target_refusal(task=task, policy=policy, history=history)))
    return out


def refusal_code(violations: list[Refusal]) -> Code:
    """The one code of a refusal with several reasons: a policy breach wins (raising the budget would not help),
    then the site's own budget, then the run's target."""
    codes = {v.code for v in violations}
    for code in (Code.POLICY, Code.SITE_BUDGET, Code.RUN_TARGET):
        if code in codes:
            return code
    return next(iter(codes))


def over_budget(*, policy: SitePolicy, history: PrivacyHistory, history_after: PrivacyHistory) -> str | None:
    """Why the round just planned would take the site past its own budget, or None."""
    if not math.isfinite(policy.max_epsilon):
        return None
    after = budget_spent(policy=policy, history=history_after)
    if after > policy.max_epsilon * (1 + 1e-9):
        return site_budget_refusal(policy=policy, history=history, after=after)
    return None


@dataclass(frozen=True)
class RoundPlan:
    """What one round will cost, decided before training: noise (0 without DP), sample rate, steps, epsilon."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_before: float  # at the run's delta, over the site's current budget
    epsilon_after: float
    batch_size: int  # expected examples per step: the task's, or under "auto" the rule's for this site's size


def choose_noise(*, task: TaskSpec, policy: SitePolicy, history: PrivacyHistory, sample_rate: float,
                 steps: int) -> float:
    """This round's noise multiplier: fixed by the task, or derived now from everything spent so far.

    Derived noise is recomputed every round, so a retried round (which trains
    again) raises the noise of the rounds left instead of passing a limit: with
    the rounds still planned at this noise, the site ends at or under both the
    run's target (at its delta) and its own budget (at the policy's delta). It
    never falls below the site's minimum noise. A limit that the noise chosen so
    far already keeps (checked exactly) is not searched: the result keeps every
    limit and is at most the max of each limit's own search (which rounds up to
    its bisection grid, finer than 0.005), so it can be up to that much smaller.
    """
    if task.dp.noise_multiplier != "auto":
        return float(task.dp.noise_multiplier)
    remaining = steps * (task.planned_rounds - task.server_round + 1)
    noise = policy.min_noise_multiplier
    limits = [(task.dp.target_epsilon, task.dp.delta, task.dp.accountant, "run")]
    if math.isfinite(policy.max_epsilon):
        limits.append((policy.max_epsilon, policy.delta, policy.accountant, "site"))
    for eps, delta, acc, which in limits:
        if _keeps(limit=eps, delta=delta, accountant=acc, history=history, noise=noise, sample_rate=sample_rate,
                  steps=remaining):
            continue  # the noise chosen so far keeps this limit too: no search needed
        try:
            z = noise_for_budget(target_epsilon=eps, delta=delta, sample_rate=sample_rate, steps=remaining,
                                 prior=history, accountant=acc)
        except ValueError as exc:
            why = (run_target_refusal(task=task, policy=policy, history=history) if which == "run"
                   else site_budget_refusal(policy=policy, history=history))
            raise BudgetRefused(Code.RUN_TARGET if which == "run" else Code.SITE_BUDGET, f"{why} ({exc})") from None
        noise = max(noise, z)
    return noise


def _keeps(*, limit: float, delta: float, accountant: Accountant, history: PrivacyHistory, noise: float,
           sample_rate: float, steps: int) -> bool:
    """Whether `steps` more at `noise` keep `history` within `limit`: one RDP evaluation (its per-step values are
    cached) instead of a search. Only for the RDP accountant: PRV at a small noise can take minutes or exhaust memory,
    and any doubt means searching, as without this check."""
    if accountant != "rdp" or noise <= 0:
        return False
    try:
        return epsilon(history=history.add(noise_multiplier=noise, sample_rate=sample_rate, steps=steps), delta=delta,
                       accountant=accountant) <= limit
    except (ValueError, OverflowError, MemoryError):
        return False


def plan_round(*, task: TaskSpec, policy: SitePolicy, history: PrivacyHistory, num_examples: int) -> RoundPlan:
    """The round's noise, sample rate and steps, or BudgetRefused naming the limit (run target or site budget)."""
    from fedhaven.shared.training import schedule  # torch: only the stage that trains pays for it

    batch = (expected_batch(site_size=num_examples) if task.train.batch_size == "auto"
             else int(task.train.batch_size))
    sample_rate, steps = schedule(num_examples=num_examples, batch_size=batch, local_epochs=task.train.local_epochs)
    before = run_spent(task=task, history=history)
    noise = 0.0
    if task.dp.enabled:
        if not task.dp.not_private and before >= task.dp.target_epsilon:
            raise BudgetRefused(Code.RUN_TARGET, run_target_refusal(task=task, policy=policy, history=history))
        noise = choose_noise(task=task, policy=policy, history=history, sample_rate=sample_rate, steps=steps)
    after_history = history.add(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
    after = run_spent(task=task, history=after_history)
    if task.dp.enabled and not task.dp.not_private and after > task.dp.target_epsilon * (1 + 1e-9):
        raise BudgetRefused(Code.RUN_TARGET, run_target_refusal(task=task, policy=policy, history=history,
                                                                after=after))
    why = over_budget(policy=policy, history=history, history_after=after_history)
    if why:
        raise BudgetRefused(Code.SITE_BUDGET, why)
    return RoundPlan(noise_multiplier=noise, sample_rate=sample_rate, steps=steps, epsilon_before=before,
                     epsilon_after=after, batch_size=batch)
