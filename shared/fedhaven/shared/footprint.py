"""What a run needs of a machine, stated before anything trains: disk for decoded images and features, and what
fits in a process's memory limit (front-end chunk, physical batch, evaluation batch). `check` commands print it
and refuse what cannot fit."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedhaven.shared.data import ImageData
from fedhaven.shared.memory import (
    MB,
    SAFETY,
    MemoryBudget,
    available_mb,
    eval_example_bytes,
    front_image_bytes,
    physical_batch_cap,
    rss_mb,
    train_example_bytes,
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

    def describe(self) -> list[str]:
        c, h, w = self.image_shape
        out = [f"data on disk   {self.images} images of {c}x{h}x{w}: {self.image_bytes / MB:.0f} MB decoded"
               + (f", {self.feature_bytes / MB:.0f} MB of front-end features" if self.feature_bytes else "")]
        out.append(f"memory         limit {self.memory_mb} MB (this process holds {self.held_mb:.0f} MB now): "
                   + (f"front end {self.front_chunk} images per chunk, " if self.front_chunk else "")
                   + f"training {self.physical_batch} examples per pass, evaluation {self.eval_batch} per batch")
        return out

    def memory_problems(self, *, setting: str) -> list[str]:
        """Why the limit cannot hold even one training example, naming the setting to raise."""
        if self.physical_batch >= 1:
            return []
        need = self.held_mb + SAFETY * self.train_example_bytes / MB
        return [f"{setting}: {self.memory_mb} MB leaves no room for one training example of "
                f"{'x'.join(map(str, self.image_shape))} ({self.held_mb:.0f} MB held + "
                f"{SAFETY * self.train_example_bytes / MB:.0f} MB per example); raise it to at least {math.ceil(need)}"]


def footprint(*, model_cfg: ModelConfig, spec: InputSpec, images: int, memory_mb: int, dp: DPConfig,
              expected_batch: int = 1024) -> Footprint:
    """What a process with `memory_mb` needs to prepare, train and evaluate `model_cfg` on `images` images."""
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
    fits = budget.working_bytes() // per
    return Footprint(images=images, image_shape=shape, memory_mb=memory_mb, held_mb=rss_mb(),
                     image_bytes=images * math.prod(shape), feature_bytes=feature_bytes, train_example_bytes=per,
                     front_chunk=chunk, physical_batch=int(min(fits, physical_batch_cap(expected_batch))),
                     eval_batch=budget.rows(per_row_bytes=eval_example_bytes(head, row_shape=row), cap=2048))


def data_footprint(*, model_cfg: ModelConfig, data: ImageData, memory_mb: int, dp: DPConfig) -> Footprint:
    """`footprint` for a loaded dataset (its images are already decoded on disk)."""
    from fedhaven.shared.recipe import expected_batch

    return footprint(model_cfg=model_cfg, spec=data.spec, images=len(data), memory_mb=memory_mb, dp=dp,
                     expected_batch=expected_batch(site_size=max(1, len(data))))


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
