"""One site's side of a round, in plain torch: check the task, pick the DP noise, train, account."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from fedhaven.shared.accounting import PrivacyHistory, epsilon, noise_for_budget
from fedhaven.shared.data import ImageData
from fedhaven.shared.models import build_model
from fedhaven.shared.task import TaskSpec
from fedhaven.shared.training import DPSettings, schedule, train_local
from fedhaven.shared.weights import get_weights, set_weights

log = logging.getLogger("fedhaven.client")


class TaskRefused(RuntimeError):
    """A task this site will not run; the message says why and what to change."""


@dataclass(frozen=True)
class Site:
    """A site: its name, its local training data (never sent anywhere) and its device."""

    name: str
    data: ImageData
    device: str = "cpu"


@dataclass(frozen=True)
class PrivacyState:
    """What a site remembers about privacy: all training history, and the noise fixed for the current run."""

    history: PrivacyHistory = PrivacyHistory()
    run_noise: float | None = None


@dataclass(frozen=True)
class FitOutcome:
    """A round's result: the weights to send, the example count, metrics, and the site's new privacy state."""

    weights: list[np.ndarray]
    num_examples: int
    metrics: dict[str, float | int | str]
    privacy: PrivacyState


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


class SiteTrainer:
    """Runs tasks on one site's data, keeping the model object between rounds."""

    def __init__(self, *, site: Site) -> None:
        self.site = site
        self._model: torch.nn.Module | None = None
        self._model_key: tuple | None = None

    def _model_for(self, task: TaskSpec) -> torch.nn.Module:
        key = (task.model, task.input)
        if self._model is None or self._model_key != key:
            self._model = build_model(cfg=task.model, spec=task.input, dp=task.dp.enabled)
            self._model_key = key
        return self._model

    def choose_noise(self, *, task: TaskSpec, privacy: PrivacyState) -> float:
        """The run's noise multiplier: fixed by the task, or derived once per run from the target epsilon."""
        if task.dp.noise_multiplier != "auto":
            return float(task.dp.noise_multiplier)
        if privacy.run_noise is not None:
            return privacy.run_noise
        sample_rate, steps = schedule(num_examples=len(self.site.data), batch_size=task.train.batch_size,
                                      local_epochs=task.train.local_epochs)
        rounds_left = task.planned_rounds - task.server_round + 1
        try:
            return noise_for_budget(target_epsilon=task.dp.target_epsilon, delta=task.dp.delta,
                                    sample_rate=sample_rate, steps=steps * rounds_left,
                                    prior=privacy.history, accountant=task.dp.accountant)
        except ValueError as exc:
            raise TaskRefused(f"site {self.site.name}: {exc}") from None

    def fit(self, *, task: TaskSpec, weights: list[np.ndarray], privacy: PrivacyState,
            generator: torch.Generator | None = None) -> FitOutcome:
        """Train one round of `task` starting from `weights`; DP unless the task turned it off."""
        problems = task_problems(task, self.site.data)
        if problems:
            raise TaskRefused(f"site {self.site.name} cannot run this task: " + "; ".join(problems))
        data = self.site.data.aligned_to(task.classes)
        model = self._model_for(task)
        set_weights(model, weights)
        dp = None
        if task.dp.enabled:
            noise = self.choose_noise(task=task, privacy=privacy)
            privacy = PrivacyState(history=privacy.history, run_noise=noise)
            dp = DPSettings(noise_multiplier=noise, max_grad_norm=task.dp.max_grad_norm,
                            grad_sample_mode=task.dp.grad_sample_mode)
        report = train_local(model=model, data=data, train=task.train, dp=dp, device=self.site.device,
                             generator=generator, proximal_mu=task.proximal_mu)
        history = privacy.history
        if dp is not None:
            history = history.add(noise_multiplier=dp.noise_multiplier, sample_rate=report.sample_rate,
                                  steps=report.steps)
            eps = epsilon(history=history, delta=task.dp.delta, accountant=task.dp.accountant)
            if eps > task.dp.target_epsilon * 1.001:
                log.warning("site %s: epsilon %.3f is past the run's target %.3f", self.site.name, eps,
                            task.dp.target_epsilon)
        else:
            eps = math.inf
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
        }
        return FitOutcome(weights=get_weights(model), num_examples=len(self.site.data), metrics=metrics,
                          privacy=PrivacyState(history=history, run_noise=privacy.run_noise))
