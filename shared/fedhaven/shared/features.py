"""A fixed front end's output, computed once per dataset chunk by chunk and cached on disk, keyed by data and transform.

The output is written chunk by chunk to a rows file (`fedhaven.shared.rows`) in
half precision (`FEATURE_DTYPE`), read back a batch at a time by training and
evaluation: neither the images nor their features are ever held all at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.rows import FileRows, RowsWriter, cache_path, cached_rows, open_rows
from fedhaven.shared.schema import ModelConfig

log = logging.getLogger("fedhaven.features")

#: Cache file layout version: bump when what a cache file holds changes.
CACHE_FORMAT = 2
#: How features are stored: half precision halves disk, page cache and reads (BENCHMARKS.md, "Large images").
FEATURE_DTYPE = "float16"


def feature_key(*, front_key: str, data: ImageData) -> str:
    """What names a front end's output on `data`: the transform and the images' content."""
    return f"features-v{CACHE_FORMAT}|{FEATURE_DTYPE}|{front_key}|{data.digest()}"


def compute_features(*, front: nn.Module, data: ImageData, chunk: int,
                     device: str = "cpu") -> Iterator[torch.Tensor]:
    """`front` applied to every image of `data` (as model input in [-1, 1]), `chunk` images at a time, in order."""
    front.to(device).eval()
    with torch.no_grad():
        for _, images in data.images.chunks(chunk):
            x = torch.empty(images.shape, dtype=torch.float32).copy_(images).div_(127.5).sub_(1.0)
            yield front(x.to(device)).cpu()


def cached_features(*, front: nn.Module, front_key: str, data: ImageData, cache_dir: Path | None,
                    chunk: int = 64, device: str = "cpu") -> FeatureData:
    """`front`'s output for `data`, from `cache_dir` when a valid file is there, else computed (and stored).

    The file is named by the SHA-256 of the transform's key and the images' digest,
    so other data or other transform parameters never reuse it. A file that does
    not load, names another key, or whose content hash does not match is
    recomputed and replaced. Without `cache_dir` the file lives in a private
    temporary folder for this process.
    """
    key = feature_key(front_key=front_key, data=data)

    def build(dest: Path) -> FileRows:
        started = last = time.monotonic()
        out: RowsWriter | None = None
        try:
            for part in compute_features(front=front, data=data, chunk=chunk, device=device):
                if out is None:
                    out = RowsWriter(dest, key=key, row_shape=tuple(part.shape[1:]), dtype=FEATURE_DTYPE,
                                     expected_rows=len(data))
                out.append(part)
                if time.monotonic() - last >= 30:
                    last = time.monotonic()
                    log.info("front end: %d of %d images (%.0f s)", out.count, len(data), last - started)
            assert out is not None  # data is not empty
            rows = out.commit()
        except BaseException:
            if out is not None:
                out.abort()
            raise
        log.debug("front end on %d images: %.1f s", len(data), time.monotonic() - started)
        return rows

    if len(data) == 0:
        raise ValueError("cannot compute features of an empty dataset")
    return FeatureData(cached_rows(cache_dir, key=key, build=build), data.labels, data.classes)


def features_cached(*, model_cfg: ModelConfig, data: ImageData, cache_dir: Path | None) -> bool:
    """Whether `cache_dir` already holds a whole features file for `model_cfg`'s front end on `data`."""
    from fedhaven.shared.models import build_model

    if cache_dir is None:
        return False
    model = build_model(cfg=model_cfg, spec=data.spec, dp=False)
    key = getattr(model, "front_key", None)
    if key is None:
        return False
    name = feature_key(front_key=key, data=data)
    return open_rows(cache_path(cache_dir, key=name), key=name, verify=False) is not None


def front_features(*, model: nn.Module, data: ImageData, cache_dir: Path | None, memory_mb: int,
                   device: str = "cpu") -> FeatureData | None:
    """`model`'s fixed front end on `data` (from the cache, or computed in chunks sized to `memory_mb`), or None
    for a model without one."""
    from fedhaven.shared.memory import MemoryBudget, front_image_bytes
    from fedhaven.shared.models import FrontEndModel, split_front

    front, _ = split_front(model)
    if front is None:
        return None
    assert isinstance(model, FrontEndModel)  # split_front finds a front end only in one
    chunk = MemoryBudget(memory_mb).rows(per_row_bytes=front_image_bytes(front, image_shape=data.images.row_shape),
                                         cap=256)
    return cached_features(front=front, front_key=model.front_key, data=data, cache_dir=cache_dir,
                           chunk=chunk, device=device)


def prepare_front_ends(*, models: Iterable[ModelConfig], data: ImageData, cache_dir: Path | None, memory_mb: int,
                       device: str = "cpu") -> list[str]:
    """Compute each model's front-end features for `data` now, before any round asks for them (a round's stages
    have timeouts; a large site's front end takes minutes): the names of the models whose features are ready."""
    from fedhaven.shared.models import ModelError, build_model

    ready = []
    for cfg in models:
        try:
            model = build_model(cfg=cfg, spec=data.spec, dp=False)
        except ModelError:
            continue  # images this model does not take: a run asking for it is refused with the reason
        if front_features(model=model, data=data, cache_dir=cache_dir, memory_mb=memory_mb, device=device) is not None:
            ready.append(cfg.name)
    return ready
