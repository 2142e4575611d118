"""One site's side of a round, in plain torch: check the task, plan the DP noise and cost, train, account."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from fedhaven.client.policy import BudgetRefused, plan_round
from fedhaven.client.types import Code, PrivacyState, Site, SiteInfo, TaskRefused
from fedhaven.shared.accounting import NOTHING_SENT, epsilon
from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.models import FrontEndModel, build_model, split_front
from fedhaven.shared.rows import Rows
from fedhaven.shared.runtime import resolve_device
from fedhaven.shared.schema import InputSpec, ModelConfig
from fedhaven.shared.task import TaskSpec
from fedhaven.shared.training import DPSettings, train_local
from fedhaven.shared.updates import add, clip_l2, num_params, subtract
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


def bound_update(new: list[np.ndarray], start: list[np.ndarray], *, bound: float) -> list[np.ndarray]:
    """`new` moved back towards `start` so that the delta new - start has L2 norm at most `bound`.

    Applied to what DP-SGD released, this is post-processing: it costs no privacy.
    """
    if not math.isfinite(bound):
        return new
    clipped, _ = clip_l2(subtract(new, start), bound * (1 - 1e-6))  # float32 rounding stays under the bound
    return add(start, clipped)


class SiteTrainer:
    """Runs tasks on one site's data, keeping the model object between rounds."""

    def __init__(self, *, site: Site) -> None:
        self.site = site
        self._model: torch.nn.Module | None = None
        self._model_key: tuple[ModelConfig, InputSpec] | None = None
        self._features: dict[str, Rows] = {}  # a fixed front end's output on this site's images (on disk)

    def _training_data(self, model: torch.nn.Module, data: ImageData,
                       device: str) -> tuple[torch.nn.Module, ImageData | FeatureData]:
        """(what DP-SGD trains, what it trains on): a model's fixed front end runs once per site, never per round,
        a chunk of images at a time, and its output is read back a batch at a time."""
        front, head = split_front(model)
        if front is None:
            return model, data
        from fedhaven.shared.features import front_features

        assert isinstance(model, FrontEndModel)  # split_front finds a front end only in one
        key = model.front_key
        if key not in self._features:
            info = self.site.info
            feats = front_features(model=model, data=data, cache_dir=info.cache(), memory_mb=info.memory_mb,
                                   device=device)
            assert feats is not None  # the model has a front end
            self._features[key] = feats.features
        return head, FeatureData(self._features[key], data.labels, data.classes)

    def physical_batch(self, trainable: torch.nn.Module, inputs: ImageData | FeatureData, *, expected: int,
                       ghost: bool) -> int:
        """The most examples one forward/backward pass may take within this site's memory limit."""
        from fedhaven.shared.memory import MemoryBudget, physical_batch_cap, train_example_bytes

        row = inputs.images.row_shape if isinstance(inputs, ImageData) else inputs.features.row_shape
        per = train_example_bytes(trainable, row_shape=row, ghost=ghost)
        return MemoryBudget(self.site.info.memory_mb).rows(per_row_bytes=per, cap=physical_batch_cap(expected))

    def _model_for(self, task: TaskSpec) -> torch.nn.Module:
        key = (task.model, task.input)
        if self._model is None or self._model_key != key:
            self._model = build_model(cfg=task.model, spec=task.input, dp=task.dp.enabled)
            self._model_key = key
        return self._model

    def update_bound(self, task: TaskSpec, weights: list[np.ndarray]) -> float:
        """The L2 bound on this round's model delta: the site policy's, or the coordinator's if smaller."""
        own = self.site.info.policy.update_bound(num_params(weights))
        return min(own, task.update_norm) if task.update_norm > 0 else own

    def fit(self, *, task: TaskSpec, weights: list[np.ndarray], privacy: PrivacyState,
            generator: torch.Generator | None = None) -> FitOutcome:
        """Train one round of `task` starting from `weights`; DP unless the task turned it off.

        The round's noise and cost are planned first (`policy.plan_round`): a round that would
        pass the run's target or the site's own budget is refused before any training.
        """
        problems = task_problems(task, self.site.data)
        if problems:
            raise TaskRefused(Code.DATA, f"site {self.site.name} cannot run this task ({NOTHING_SENT}): "
                              + "; ".join(problems))
        data = self.site.data.aligned_to(task.classes)
        policy = self.site.info.policy
        history = privacy.history
        try:
            plan = plan_round(task=task, policy=policy, history=history, num_examples=len(data))
        except BudgetRefused as exc:
            raise TaskRefused(exc.code, f"site {self.site.name} refused the task ({NOTHING_SENT}): {exc}") from None
        dp = None
        if task.dp.enabled:
            dp = DPSettings(noise_multiplier=plan.noise_multiplier, max_grad_norm=task.dp.max_grad_norm,
                            grad_sample_mode=task.dp.grad_sample_mode)
        model = self._model_for(task)
        set_weights(model, weights)
        device = resolve_device(self.site.info.device)
        trainable, inputs = self._training_data(model, data, device)
        physical = self.physical_batch(trainable, inputs, expected=plan.batch_size,
                                       ghost=dp is not None and dp.grad_sample_mode == "ghost")
        report = train_local(model=trainable, data=inputs, train=replace(task.train, batch_size=plan.batch_size),
                             dp=dp, device=device, generator=generator, proximal_mu=task.proximal_mu,
                             physical_batch=physical)
        if (report.sample_rate, report.steps) != (plan.sample_rate, plan.steps):
            raise RuntimeError(f"site {self.site.name}: trained {report.steps} steps at rate {report.sample_rate} "
                               f"where {plan.steps} at {plan.sample_rate} were planned; nothing is sent")
        history = history.add(noise_multiplier=report.noise_multiplier, sample_rate=report.sample_rate,
                              steps=report.steps)
        eps_before = plan.epsilon_before
        eps = epsilon(history=history, delta=task.dp.delta, accountant=task.dp.accountant)
        new_weights = bound_update(get_weights(model), list(weights), bound=self.update_bound(task, weights))
        digest, norm = update_digest(new_weights, list(weights))
        metrics: dict[str, float | int | str] = {
            "site": self.site.name,
            **({"loss": report.loss, "accuracy": report.accuracy} if policy.send_training_metrics else {}),
            "epsilon": eps,
            "delta": task.dp.delta if dp is not None else 0.0,
            "noise_multiplier": report.noise_multiplier,
            "sample_rate": report.sample_rate,
            "steps": report.steps,
            "total_steps": history.total_steps,
            "empty_batches": report.empty_batches,
            "train_time_s": report.seconds,
            # the norm of the DP-released delta (post-processing, no privacy cost): what [robust]'s bound follows
            **({"update_norm": norm} if dp is not None else {}),
        }
        ledger: dict[str, float | int | str] = {
            "site": self.site.name, "server_round": task.server_round, "model": task.model.name,
            "weights_sha256": digest, "update_l2_norm": norm, "num_examples": len(data),
            "noise_multiplier": report.noise_multiplier, "sample_rate": report.sample_rate,
            "steps": report.steps, "delta": task.dp.delta,
            "accountant": task.dp.accountant, "epsilon_before": eps_before, "epsilon_after": eps}
        return FitOutcome(weights=new_weights, num_examples=len(data), metrics=metrics,
                          privacy=PrivacyState(history=history), ledger=ledger)
