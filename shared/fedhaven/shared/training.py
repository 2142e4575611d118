"""Local training: DP-SGD with Poisson sampling through Opacus (or plain SGD), and evaluation, in plain torch."""

from __future__ import annotations

import math
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.recipe import expected_batch
from fedhaven.shared.runtime import quiet_opacus_import
from fedhaven.shared.schema import GradSampleMode, TrainConfig


@dataclass(frozen=True)
class DPSettings:
    """The DP-SGD mechanism for one round: noise multiplier, per-sample clipping norm, per-sample-gradient engine."""

    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: GradSampleMode = "ghost"


@dataclass(frozen=True)
class TrainReport:
    """What one call of `train_local` did; `sample_rate` and `steps` are what the accountant needs."""

    loss: float
    accuracy: float
    examples_seen: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    empty_batches: int
    seconds: float = 0.0  # wall time of the training loop
    physical_batch: int = 0  # most examples in one forward/backward pass (0: whole Poisson batches)


def warm_up() -> None:
    """Load what a site's first DP training step would (Opacus; the optimizer's compile hooks, which import torch's
    dynamo), so that a long-lived process pays for it at start, not in its first round."""
    quiet_opacus_import()
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


def schedule(*, num_examples: int, batch_size: int, local_epochs: float) -> tuple[float, int]:
    """(sample rate, steps) for `local_epochs` passes with expected batch `batch_size`."""
    if num_examples < 1:
        raise ValueError("cannot train on an empty dataset")
    sample_rate = min(1.0, batch_size / num_examples)
    return sample_rate, max(1, round(local_epochs / sample_rate))


def poisson_batches(*, num_examples: int, sample_rate: float, steps: int,
                    generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` batches, each example included independently with probability `sample_rate` (may be empty)."""
    for _ in range(steps):
        mask = torch.rand(num_examples, generator=generator) < sample_rate
        yield mask.nonzero(as_tuple=True)[0]


def secure_generator(device: str = "cpu") -> torch.Generator:
    """A generator seeded from the operating system's entropy, never from configuration."""
    return torch.Generator(device).manual_seed(secrets.randbits(63))


def _derived(generator: torch.Generator, device: str) -> torch.Generator:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def _wrap(model: nn.Module, mode: GradSampleMode) -> nn.Module:
    quiet_opacus_import()
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleExpandedWeights

    wrapped: nn.Module  # Opacus' wrappers are nn.Modules (Opacus has no type information)
    if mode == "ew":
        wrapped = GradSampleModuleExpandedWeights(model, batch_first=True, loss_reduction="mean")
    else:
        wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch")
    return wrapped


def _noise_only(optimizer: Any, params: Sequence[torch.Tensor], *, ghost: bool) -> None:  # Any: Opacus' DPOptimizer
    """An empty Poisson batch still takes a step: zero clipped sum plus noise, scaled by the expected batch size.

    This is the step DP-SGD's analysis assumes; skipping it would reveal that the
    batch was empty, dividing by the actual size (0) would produce NaNs.
    """
    for p in params:
        if ghost:  # ghost clipping's optimizer noises p.grad, the already clipped sum
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros(  # type: ignore[attr-defined]  # Opacus' attribute, not torch's
                (0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.pre_step()


#: Opacus' (GradSampleModule, DPOptimizer, loss function). Opacus has no type information, and its ghost-clipping loss
#: returns a DPTensorFastGradientClipping rather than a Tensor: the module, the optimizer and the loss are Any.
DPEngine = tuple[Any, Any, Callable[[torch.Tensor, torch.Tensor], Any]]


def _dp_engine(model: nn.Module, sgd: torch.optim.Optimizer, dp: DPSettings, *, expected_batch: int,
               generator: torch.Generator) -> DPEngine:
    """Opacus' module, optimizer and loss for `dp.grad_sample_mode`.

    "ghost" is Opacus' ghost clipping: per-example gradient norms without
    materialising per-example gradients, then a second backward pass with each
    example's loss scaled by its clipping factor.
    """
    quiet_opacus_import()
    if dp.grad_sample_mode == "ghost":
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        net = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                   max_grad_norm=dp.max_grad_norm, use_ghost_clipping=True)
        opt = DPOptimizerFastGradientClipping(sgd, noise_multiplier=dp.noise_multiplier,
                                              max_grad_norm=dp.max_grad_norm, expected_batch_size=expected_batch,
                                              loss_reduction="mean", generator=generator)
        return net, opt, DPLossFastGradientClipping(net, opt, nn.CrossEntropyLoss(reduction="mean"),
                                                    loss_reduction="mean")
    from opacus.optimizers import DPOptimizer

    opt = DPOptimizer(sgd, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                      expected_batch_size=expected_batch, generator=generator)
    return _wrap(model, dp.grad_sample_mode), opt, F.cross_entropy


def train_local(
    *,
    model: nn.Module,
    data: ImageData | FeatureData,
    train: TrainConfig,
    dp: DPSettings | None,
    device: str,
    generator: torch.Generator | None = None,
    proximal_mu: float = 0.0,
    physical_batch: int | None = None,
) -> TrainReport:
    """Train `model` in place on `data`; DP-SGD (Opacus, Poisson sampling) when `dp` is given, else plain SGD.

    Each step's batch is processed `physical_batch` examples at a time (as Opacus'
    BatchMemoryManager does): the clipped per-example gradients of the parts are
    summed and noised once, so the step and its privacy are those of the whole
    batch, while memory is that of `physical_batch` examples. None: whole batches.

    `generator` drives batch sampling and DP noise. Leave it None in real use: DP
    only holds while nobody can predict which examples were sampled or what noise
    was drawn, so it then comes from the operating system's entropy. Tests pass a
    seeded one to be repeatable.

    With `proximal_mu` > 0 the FedProx term mu/2 * ||w - w_start||^2 is added; its
    gradient does not depend on the data, so under DP it is added after noising.
    """
    started = time.perf_counter()
    model.to(device).train()
    if generator is None:
        generator = secure_generator()
    batch_size = expected_batch(site_size=len(data)) if train.batch_size == "auto" else int(train.batch_size)
    sample_rate, steps = schedule(num_examples=len(data), batch_size=batch_size, local_epochs=train.local_epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    sgd = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    labels = data.labels
    loss_sum, correct, seen, empty, largest = 0.0, 0, 0, 0, 0
    physical = max(1, physical_batch) if physical_batch else max(1, len(data))

    ghost = dp is not None and dp.grad_sample_mode == "ghost"
    if dp is not None:
        net, optimizer, loss_fn = _dp_engine(model, sgd, dp, expected_batch=max(1, round(sample_rate * len(data))),
                                             generator=_derived(generator, device))
        batches: Iterator[torch.Tensor] = poisson_batches(num_examples=len(data), sample_rate=sample_rate,
                                                          steps=steps, generator=generator)
    else:
        net, optimizer, loss_fn = model, sgd, F.cross_entropy
        batches = _shuffled_batches(len(data), batch_size, steps, generator)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for idx in batches:
                optimizer.zero_grad(set_to_none=True)
                if len(idx) == 0:
                    empty += 1
                    _noise_only(optimizer, params, ghost=ghost)
                parts = torch.split(idx, physical) if len(idx) else ()
                largest = max(largest, max((len(p) for p in parts), default=0))
                for i, part in enumerate(parts):
                    last = i == len(parts) - 1
                    if dp is not None and not last:
                        optimizer.signal_skip_step(do_skip=True)  # clip and add up; noise once, at the last part
                    x = data.inputs(part).to(device, non_blocking=True)
                    y = labels[part].to(device, non_blocking=True)
                    out = net(x)
                    loss = loss_fn(out, y)
                    # plain SGD: the mean over the whole batch is the parts' means weighted by their sizes
                    (loss if dp is not None else loss * (len(part) / len(idx))).backward()
                    loss_sum += float(loss.item()) * len(part)
                    correct += int((out.detach().argmax(1) == y).sum())
                    seen += len(part)
                    if dp is not None:
                        optimizer.pre_step()
                        if not last:
                            optimizer.zero_grad(set_to_none=True)  # keeps the skipped parts' clipped sum
                if anchor:
                    with torch.no_grad():
                        for p, a in zip(params, anchor, strict=True):
                            assert p.grad is not None  # every trained parameter has one after backward()
                            p.grad.add_(p.detach() - a, alpha=proximal_mu)
                sgd.step()
    finally:
        optimizer.zero_grad(set_to_none=True)  # also drops the optimizer's summed gradients
        if dp is not None:
            # Opacus removes its hooks and what it put on the parameters (per-sample gradients and norms), so the
            # model can be wrapped again next round
            net.to_standard_module()

    return TrainReport(
        loss=loss_sum / seen if seen else math.nan,
        accuracy=correct / seen if seen else math.nan,
        examples_seen=seen,
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=dp.noise_multiplier if dp is not None else 0.0,
        empty_batches=empty,
        seconds=time.perf_counter() - started,
        physical_batch=largest,
    )


def _shuffled_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos >= n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos: pos + batch_size]
        pos += batch_size


@torch.no_grad()
def evaluate(*, model: nn.Module, data: ImageData | FeatureData, device: str,
             batch_size: int = 2048) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `data`."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.to(device).eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.inputs(slice(start, start + batch_size)).to(device)
        y = data.labels[start: start + batch_size].to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return loss_sum / len(data), correct / len(data)
