"""One memory budget per process: what it holds now, and how many examples a training step, an evaluation batch
or a front-end chunk may take so that the process stays under its limit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

MB = 1 << 20
#: Headroom for what the per-example estimates do not see (allocator slack, temporaries inside Opacus).
SAFETY = 2.0
#: The per-image working memory of a front end that does not state its own, as a multiple of its input's bytes.
FRONT_WORK_FACTOR = 64
#: The most examples one DP-SGD forward/backward pass takes, whatever the site's size (as Opacus'
#: BatchMemoryManager's `max_physical_batch_size`): a larger site takes more passes per step, not more memory.
#: Not slower than whole batches on the default model's heads (BENCHMARKS.md, "Large images").
PHYSICAL_BATCH_CAP = 256


#: Copies of a model's parameters a training process holds beside its examples' memory: the weights, their gradient,
#: the optimiser's momentum, Opacus' summed and noised gradient, and the update being sent.
TRAIN_MODEL_COPIES = 6
#: Wire-sized copies of each site's update a coordinator holds while a round aggregates. Flower's aggregation
#: gathers every reply of the round before it sums them (each reply's bytes and their decoded arrays; the
#: SuperLink keeps the replies too); in a simulation each reply also passes through Ray's object store, whose
#: shared pages count in the driver's resident memory. The simulated figure is from the 224px LeNet benchmark run
#: (BENCHMARKS.md, "Large images"): its driver's peak was 5.0 copies above what it held before round 1, which was
#: 460 MB more than `check` holds (1.1 copies there); rounded up, so that the limit `check` names was above that
#: run's peak. The deployed figure is not measured: the simulated one without the object store's share.
COORDINATOR_UPDATE_COPIES = 4
SIMULATED_UPDATE_COPIES = 7


def update_wire_bytes(parameters: int, *, secagg: bool) -> int:
    """Bytes one site's update takes as sent: SecAgg+ sends int64 masked integers, a plain update float32."""
    return parameters * (8 if secagg else 4)


def physical_batch_cap(expected: int) -> int:
    """The most examples one DP-SGD pass of a Poisson batch of `expected` examples takes: the batch's size a few
    standard deviations above `expected`, at most `PHYSICAL_BATCH_CAP`. Training and `check` both size from it."""
    return min(PHYSICAL_BATCH_CAP, expected + 4 * math.isqrt(max(0, expected)) + 8)


def _status_kb(field: str, path: str = "/proc/self/status") -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """This process's resident memory now (file-backed pages it has mapped included), in MB."""
    kb = _status_kb("VmRSS")
    if kb is None:  # not Linux: the peak is the best available bound
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def peak_rss_mb(pid: int | None = None) -> float:
    """A process's peak resident memory (its high-water mark, VmHWM), in MB."""
    kb = _status_kb("VmHWM", f"/proc/{pid or 'self'}/status")
    return (kb or 0) / 1024


def available_mb() -> float:
    """Memory the machine can still give without swapping (MemAvailable), in MB; infinite where unknown."""
    kb = _status_kb("MemAvailable", "/proc/meminfo")
    return math.inf if kb is None else kb / 1024


@dataclass(frozen=True)
class MemoryBudget:
    """A process's memory limit in MB; batches are sized so that the process stays under it."""

    limit_mb: int

    def working_bytes(self) -> int:
        """Bytes batches may use now: the limit minus what the process holds, divided by the safety factor."""
        return max(0, int((self.limit_mb - rss_mb()) * MB / SAFETY))

    def rows(self, *, per_row_bytes: int, cap: int) -> int:
        """How many rows of `per_row_bytes` fit in the working memory, between 1 and `cap`."""
        return max(1, min(cap, self.working_bytes() // max(1, per_row_bytes)))


def _leaf_sizes(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, int, int]]:
    """(module, input elements, output elements) of every leaf module on one example."""
    seen: list[tuple[nn.Module, int, int]] = []
    hooks = []
    for m in model.modules():
        if next(m.children(), None) is None:
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out: seen.append((mod, sum(t.numel() for t in inp if isinstance(t, torch.Tensor)),
                                                   out.numel() if isinstance(out, torch.Tensor) else 0))))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def train_example_bytes(model: nn.Module, *, row_shape: tuple[int, ...], ghost: bool) -> int:
    """An upper estimate of one example's memory in a DP-SGD step of `model` (Opacus), in bytes.

    Per example: its input, each layer's output twice (kept for backward, and its
    gradient), and what per-example clipping materialises: for a convolution its
    unfolded input and per-example weight gradient; without ghost clipping every
    layer's per-example gradient.
    """
    floats = math.prod(row_shape)
    for mod, _n_in, n_out in _leaf_sizes(model, torch.zeros(1, *row_shape)):
        floats += 2 * n_out
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        if isinstance(mod, nn.Conv2d):
            k = math.prod(mod.kernel_size) * mod.in_channels // mod.groups
            floats += k * (n_out // mod.out_channels) + params
        elif not ghost:
            floats += params
    return int(floats * 4 * SAFETY)


def eval_example_bytes(model: nn.Module, *, row_shape: tuple[int, ...]) -> int:
    """An upper estimate of one example's memory when `model` only predicts (no gradients), in bytes."""
    sizes = _leaf_sizes(model, torch.zeros(1, *row_shape))
    largest = max((n_in + n_out for _, n_in, n_out in sizes), default=0)
    return int((math.prod(row_shape) + 2 * largest) * 4 * SAFETY)


def front_image_bytes(front: nn.Module, *, image_shape: tuple[int, ...]) -> int:
    """One image's working memory in a fixed front end: its own statement (`work_bytes_per_image`) where it makes
    one, else a multiple of the image's bytes as floats."""
    stated = getattr(front, "work_bytes_per_image", None)
    own = int(stated) if stated is not None else FRONT_WORK_FACTOR * math.prod(image_shape) * 4
    return own + math.prod(image_shape) * 5  # the uint8 image and its float copy

