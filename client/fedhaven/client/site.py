"""One site's side of a round, in plain torch: check the task, pick the DP noise, train, account."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fedhaven.client.policy import over_budget
from fedhaven.client.types import PrivacyState, Site, SiteInfo, TaskRefused
from fedhaven.shared.accounting import PrivacyHistory, epsilon, noise_for_budget
from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.models import build_model, split_front
from fedhaven.shared.task import TaskSpec
from fedhaven.shared.runtime import resolve_device
from fedhaven.shared.training import DPSettings, schedule, train_local
from fedhaven.shared.weights import get_weights, set_weights

__all__ = ["FitOutcome", "PrivacyState", "Site", "SiteInfo", "SiteTrainer", "TaskRefused", "task_problems"]

log = logging.getLogger("fedhaven.client")


@dataclass(frozen=True)
class FitOutcome:
    """A round's result: weights to send, example count, metrics, the new privacy state, the ledger facts."""

    weights: list[np.ndarray]
    num_examples: int
    metrics: dict[str, float | int | str]
    privacy: PrivacyState
    ledger: dict[str, float | int | str] = field(default_factory=dict)


def task_problems(task: TaskSpec, data: ImageData) -> list[str]:
    """Why `data` cannot serve `task` (shape, channels, classes), empty when it can."""
    spec = data.spec
    out = [f"class {c!r} of this site is not among the task's classes {list(task.classes)}"
           for c in data.classes if c not in task.classes]
    if (spec.channels, spec.image_size) != (task.input.channels, task.input.image_size):
        out.append(f"the task expects {task.input.channels}x{task.input.image_size}x{task.input.image_size} images, "
                   f"this site has {spec.channels}x{spec.image_size}x{spec.image_size}; "
                   f"set the site's image size/channels to match the coordinator's")
    if len(data) == 0:
        out.append("this site has no training examples")
    return out


def update_digest(weights: list[np.ndarray], start: list[np.ndarray]) -> tuple[str, float]:
    """(sha256 of the trained weights, L2 norm of the update weights - start) for the ledger."""
    h = hashlib.sha256()
    sq = 0.0
    for w, s in zip(weights, start, strict=True):
        h.update(np.ascontiguousarray(w).tobytes())
        sq += float(np.sum((w.astype(np.float64) - s.astype(np.float64)) ** 2))
    return h.hexdigest(), math.sqrt(sq)


class SiteTrainer:
    """Runs tasks on one site's data, keeping the model object between rounds."""

    def __init__(self, *, site: Site) -> None:
        self.site = site
        self._model: torch.nn.Module | None = None
        self._model_key: tuple | None = None
        self._features: dict[str, torch.Tensor] = {}  # a fixed front end's output on this site's images

    def _training_data(self, model: torch.nn.Module, data: ImageData) -> tuple[torch.nn.Module, ImageData | FeatureData]:
        """(what DP-SGD trains, what it trains on): a model's fixed front end runs once per site, never per round."""
        front, head = split_front(model)
        if front is None:
            return model, data
        from fedhaven.shared.features import cached_features

        key = model.front_key  # type: ignore[union-attr] - FrontEndModel
        if key not in self._features:
            info = self.site.info
            cache = info.cache_dir or (info.state_dir / "feature-cache" if info.state_dir is not None else None)
            self._features[key] = cached_features(front=front, front_key=key, data=data, cache_dir=cache).features
        return head, FeatureData(self._features[key], data.labels, data.classes)

    def _model_for(self, task: TaskSpec) -> torch.nn.Module:
        key = (task.model, task.input)
        if self._model is None or self._model_key != key:
            self._model = build_model(cfg=task.model, spec=task.input, dp=task.dp.enabled)
            self._model_key = key
        return self._model

    def choose_noise(self, *, task: TaskSpec, privacy: PrivacyState) -> float:
        """The run's noise multiplier: fixed by the task, or derived once per run.

        Derived noise keeps both the task's target (at its delta) and the site's own
        budget (at the policy's delta) for every planned round, counting all prior
        spending, and never falls below the site's minimum noise.
        """
        if task.dp.noise_multiplier != "auto":
            return float(task.dp.noise_multiplier)
        if privacy.run_noise is not None:
            return privacy.run_noise
        policy = self.site.info.policy
        sample_rate, steps = schedule(num_examples=len(self.site.data), batch_size=task.train.batch_size,
                                      local_epochs=task.train.local_epochs)
        planned = steps * (task.planned_rounds - task.server_round + 1)
        targets = [(task.dp.target_epsilon, task.dp.delta, task.dp.accountant)]
        if math.isfinite(policy.max_epsilon):
            targets.append((policy.max_epsilon, policy.delta, policy.accountant))
        try:
            noise = max(noise_for_budget(target_epsilon=eps, delta=delta, sample_rate=sample_rate, steps=planned,
                                         prior=privacy.history, accountant=acc) for eps, delta, acc in targets)
        except ValueError as exc:
            raise TaskRefused(f"site {self.site.name}: {exc}") from None
        return max(noise, policy.min_noise_multiplier)

    def fit(self, *, task: TaskSpec, weights: list[np.ndarray], privacy: PrivacyState,
            generator: torch.Generator | None = None) -> FitOutcome:
        """Train one round of `task` starting from `weights`; DP unless the task turned it off."""
        problems = task_problems(task, self.site.data)
        if problems:
            raise TaskRefused(f"site {self.site.name} cannot run this task: " + "; ".join(problems))
        data = self.site.data.aligned_to(task.classes)
        dp = None
        history = privacy.history
        if task.dp.enabled:
            noise = self.choose_noise(task=task, privacy=privacy)
            privacy = PrivacyState(history=privacy.history, run_noise=noise)
            sample_rate, steps = schedule(num_examples=len(data), batch_size=task.train.batch_size,
                                          local_epochs=task.train.local_epochs)
            planned = history.add(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
            why = over_budget(policy=self.site.info.policy, history_after=planned)
            if why:
                raise TaskRefused(f"site {self.site.name}: {why}")
            dp = DPSettings(noise_multiplier=noise, max_grad_norm=task.dp.max_grad_norm,
                            grad_sample_mode=task.dp.grad_sample_mode)
        model = self._model_for(task)
        set_weights(model, weights)
        device = resolve_device(self.site.info.device)  # type: ignore[arg-type]
        trainable, inputs = self._training_data(model, data)
        report = train_local(model=trainable, data=inputs, train=task.train, dp=dp, device=device,
                             generator=generator, proximal_mu=task.proximal_mu)
        eps_before = epsilon(history=history, delta=task.dp.delta, accountant=task.dp.accountant)
        if dp is not None:
            history = history.add(noise_multiplier=dp.noise_multiplier, sample_rate=report.sample_rate,
                                  steps=report.steps)
            eps = epsilon(history=history, delta=task.dp.delta, accountant=task.dp.accountant)
            if eps > task.dp.target_epsilon * 1.001:
                log.warning("site %s: epsilon %.3f is past the run's target %.3f", self.site.name, eps,
                            task.dp.target_epsilon)
        else:
            eps = math.inf
        new_weights = get_weights(model)
        digest, norm = update_digest(new_weights, list(weights))
        metrics: dict[str, float | int | str] = {
            "site": self.site.name,
            "loss": report.loss,
            "accuracy": report.accuracy,
            "epsilon": eps,
            "delta": task.dp.delta if dp is not None else 0.0,
            "noise_multiplier": report.noise_multiplier,
            "sample_rate": report.sample_rate,
            "steps": report.steps,
            "total_steps": history.total_steps,
            "empty_batches": report.empty_batches,
            "train_time_s": report.seconds,
        }
        ledger = {"site": self.site.name, "server_round": task.server_round, "model": task.model.name,
                  "weights_sha256": digest, "update_l2_norm": norm, "num_examples": len(data),
                  "noise_multiplier": report.noise_multiplier, "sample_rate": report.sample_rate,
                  "steps": report.steps, "delta": task.dp.delta,
                  "accountant": task.dp.accountant, "epsilon_before": eps_before, "epsilon_after": eps}
        return FitOutcome(weights=new_weights, num_examples=len(data), metrics=metrics,
                          privacy=PrivacyState(history=history, run_noise=privacy.run_noise), ledger=ledger)
