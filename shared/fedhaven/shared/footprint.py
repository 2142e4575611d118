"""What a run needs of a machine, stated before anything trains: disk for decoded images and features, and what
fits in a process's memory limit (the model's own copies, a round's updates at the coordinator, front-end chunk,
physical batch, evaluation batch). `check` commands print it and refuse what cannot fit."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedhaven.shared.data import ImageData
from fedhaven.shared.memory import (
    COORDINATOR_UPDATE_COPIES,
    MB,
    SAFETY,
    SIMULATED_UPDATE_COPIES,
    TRAIN_MODEL_COPIES,
    MemoryBudget,
    available_mb,
    eval_example_bytes,
    front_image_bytes,
    physical_batch_cap,
    rss_mb,
    train_example_bytes,
    update_wire_bytes,
)
from fedhaven.shared.schema import DPConfig, InputSpec, ModelConfig

#: Space left free on a cache's disk beyond what the cache files take.
DISK_MARGIN = 1.1


@dataclass(frozen=True)
class Footprint:
    """One process's share of a run on `images` images: bytes on disk and batch sizes within `memory_mb`."""

    images: int
    image_shape: tuple[int, int, int]
    memory_mb: int
    held_mb: float  # what the process holds now, before any batch
    image_bytes: int  # the decoded images on disk (uint8)
    feature_bytes: int  # the front end's output on disk (0 without a front end)
    train_example_bytes: int
    front_chunk: int  # images per front-end chunk (0 without a front end)
    physical_batch: int  # most examples per forward/backward pass (0: not even one fits)
    eval_batch: int
    parameters: int = 0  # the trained part's parameters
    model_bytes: int = 0  # the copies of them a training process holds (TRAIN_MODEL_COPIES)
    round_sites: int = 0  # a coordinator: the sites whose updates one round gathers (0: a site)
    update_bytes: int = 0  # a coordinator: what one site's update takes while the round aggregates
    update_wire_bytes: int = 0  # one site's update as sent

    def describe(self) -> list[str]:
        c, h, w = self.image_shape
        out = [f"data on disk   {self.images} images of {c}x{h}x{w}: {self.image_bytes / MB:.0f} MB decoded"
               + (f", {self.feature_bytes / MB:.0f} MB of front-end features" if self.feature_bytes else "")]
        out.append(f"memory         limit {self.memory_mb} MB (this process holds {self.held_mb:.0f} MB now): "
                   + (f"front end {self.front_chunk} images per chunk, " if self.front_chunk else "")
                   + f"training {self.physical_batch} examples per pass, evaluation {self.eval_batch} per batch")
        if self.round_sites:
            out.append(f"round updates  {self.round_sites} sites x {self.update_wire_bytes / MB:.1f} MB as sent "
                       f"({self.parameters:,} parameters), held at once while a round aggregates: about "
                       f"{self.round_sites * self.update_bytes / MB:.0f} MB")
        return out

    def memory_problems(self, *, setting: str) -> list[str]:
        """Why the limit cannot hold even one training example, or (a coordinator) one round's updates, naming the
        setting to raise."""
        out = []
        if self.physical_batch < 1:
            need = self.held_mb + (self.model_bytes + SAFETY * self.train_example_bytes) / MB
            out.append(f"{setting}: {self.memory_mb} MB leaves no room for one training example of "
                       f"{'x'.join(map(str, self.image_shape))} ({self.held_mb:.0f} MB held + "
                       f"{self.model_bytes / MB:.0f} MB of model copies + "
                       f"{SAFETY * self.train_example_bytes / MB:.0f} MB per example); raise it to at least "
                       f"{math.ceil(need)}")
        updates = self.round_sites * self.update_bytes / MB
        if self.round_sites and self.held_mb + updates > self.memory_mb:
            out.append(f"{setting}: {self.memory_mb} MB cannot hold one round's updates: the coordinator gathers "
                       f"all {self.round_sites} before it sums them, about {updates:.0f} MB for "
                       f"{self.parameters:,} parameters each, beside the {self.held_mb:.0f} MB it holds; raise it to "
                       f"at least {math.ceil(self.held_mb + updates)}, sample fewer sites per round "
                       f"(strategy.fraction_fit) or choose a smaller model")
        return out


def footprint(*, model_cfg: ModelConfig, spec: InputSpec, images: int, memory_mb: int, dp: DPConfig,
              expected_batch: int = 1024, round_sites: int = 0, secagg: bool = False,
              simulated: bool = False) -> Footprint:
    """What a process with `memory_mb` needs to prepare, train and evaluate `model_cfg` on `images` images; for a
    coordinator (`round_sites` > 0), also to hold the updates of that many sites at once (`secagg`: masked;
    `simulated`: passed through Ray's object store)."""
    from fedhaven.shared.models import build_model, split_front

    model = build_model(cfg=model_cfg, spec=spec, dp=False)
    front, head = split_front(model)
    shape = (spec.channels, spec.image_size, spec.image_size)
    row: tuple[int, ...] = shape
    feature_bytes, chunk = 0, 0
    budget = MemoryBudget(memory_mb)
    if front is not None:
        import torch

        with torch.no_grad():
            row = tuple(front.eval()(torch.zeros(1, *shape)).shape[1:])
        feature_bytes = images * math.prod(row) * 2  # half precision (fedhaven.shared.features)
        chunk = budget.rows(per_row_bytes=front_image_bytes(front, image_shape=shape), cap=256)
    per = train_example_bytes(head, row_shape=row, ghost=dp.enabled and dp.grad_sample_mode == "ghost")
    parameters = sum(p.numel() for p in head.parameters() if p.requires_grad)
    model_bytes = TRAIN_MODEL_COPIES * 4 * parameters
    fits = max(0, budget.working_bytes() - int(model_bytes / SAFETY)) // per
    wire = update_wire_bytes(parameters, secagg=secagg)
    copies = SIMULATED_UPDATE_COPIES if simulated else COORDINATOR_UPDATE_COPIES
    return Footprint(images=images, image_shape=shape, memory_mb=memory_mb, held_mb=rss_mb(),
                     image_bytes=images * math.prod(shape), feature_bytes=feature_bytes, train_example_bytes=per,
                     front_chunk=chunk, physical_batch=int(min(fits, physical_batch_cap(expected_batch))),
                     eval_batch=budget.rows(per_row_bytes=eval_example_bytes(head, row_shape=row), cap=2048),
                     parameters=parameters, model_bytes=model_bytes, round_sites=round_sites,
                     update_bytes=copies * wire if round_sites else 0, update_wire_bytes=wire)


def data_footprint(*, model_cfg: ModelConfig, data: ImageData, memory_mb: int, dp: DPConfig, round_sites: int = 0,
                   secagg: bool = False, simulated: bool = False) -> Footprint:
    """`footprint` for a loaded dataset (its images are already decoded on disk)."""
    from fedhaven.shared.recipe import expected_batch

    return footprint(model_cfg=model_cfg, spec=data.spec, images=len(data), memory_mb=memory_mb, dp=dp,
                     expected_batch=expected_batch(site_size=max(1, len(data))), round_sites=round_sites,
                     secagg=secagg, simulated=simulated)


def disk_problems(*, folder: Path | None, need_bytes: int, what: str) -> list[str]:
    """Why `folder`'s disk cannot take `need_bytes` more (with a margin), or nothing."""
    if folder is None or need_bytes <= 0:
        return []
    probe = next((p for p in [Path(folder), *Path(folder).parents] if p.exists()), None)
    if probe is None:
        return []
    free = shutil.disk_usage(probe).free
    if free < need_bytes * DISK_MARGIN:
        return [f"disk: {what} needs {need_bytes * DISK_MARGIN / MB:.0f} MB in {folder} but only {free / MB:.0f} MB "
                f"are free; free space there or point the cache elsewhere"]
    return []


def machine_problems(*, need_mb: float, what: str) -> list[str]:
    """Why this machine cannot give `need_mb` (its available memory), or nothing."""
    free = available_mb()
    if need_mb > free:
        return [f"memory: {what} needs about {need_mb:.0f} MB but this machine has {free:.0f} MB available"]
    return []
