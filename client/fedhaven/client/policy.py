"""The site policy, enforced on the site: what a task may ask, checked before any data is read for it."""

from __future__ import annotations

import math

from fedhaven.client.site_config import SitePolicy
from fedhaven.shared.accounting import BUDGET_SPENT, PrivacyHistory, epsilon
from fedhaven.shared.task import TaskSpec


def budget_spent(*, policy: SitePolicy, history: PrivacyHistory) -> float:
    """The site's cumulative epsilon at the policy's delta, over everything it ever trained."""
    return epsilon(history=history, delta=policy.delta, accountant=policy.accountant)


def task_violations(*, task: TaskSpec, policy: SitePolicy, secure_aggregation: bool,
                    history: PrivacyHistory) -> list[str]:
    """Every way `task` breaks `policy` that can be seen without the site's data."""
    out = []
    if policy.require_secure_aggregation and not secure_aggregation:
        out.append("this site only sends updates under secure aggregation (policy.require_secure_aggregation); "
                   "the coordinator asked for plain training: enable [secagg] on the coordinator")
    if policy.require_dp and not task.dp.enabled:
        out.append("this site only trains with differential privacy (policy.require_dp); enable [dp] on the "
                   "coordinator")
    if not policy.allows_model(task.model.name):
        out.append(f"model {task.model.name!r} is not allowed here (policy.allowed_models = "
                   f"{list(policy.allowed_models)})")
    if task.dp.enabled:
        if task.dp.noise_multiplier != "auto" and task.dp.noise_multiplier < policy.min_noise_multiplier:
            out.append(f"noise multiplier {task.dp.noise_multiplier:g} is below this site's minimum "
                       f"{policy.min_noise_multiplier:g} (policy.min_noise_multiplier)")
        if task.dp.delta > policy.delta:
            out.append(f"delta {task.dp.delta:g} is weaker than this site's delta {policy.delta:g}")
        spent = budget_spent(policy=policy, history=history)
        if math.isfinite(policy.max_epsilon) and spent >= policy.max_epsilon:
            out.append(f"this site's {BUDGET_SPENT}: epsilon {spent:.3f} of {policy.max_epsilon:g} "
                       f"(delta {policy.delta:g}) across all runs; nothing more can be trained")
    return out


def over_budget(*, policy: SitePolicy, history_after: PrivacyHistory) -> str | None:
    """Why the round just planned would take the site past its budget, or None."""
    if not math.isfinite(policy.max_epsilon):
        return None
    after = budget_spent(policy=policy, history=history_after)
    if after > policy.max_epsilon * (1 + 1e-9):
        return (f"{BUDGET_SPENT} for another round: it would take the site to epsilon {after:.3f}, past its "
                f"budget {policy.max_epsilon:g} (delta {policy.delta:g}); refused before training")
    return None
