"""A fixed front end's output, computed once per dataset and cached on disk, keyed by the data and the transform."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from fedhaven.shared.data import FeatureData, ImageData

log = logging.getLogger("fedhaven.features")

#: Cache file layout version: bump when what a cache file holds changes.
CACHE_FORMAT = 1


def data_digest(data: ImageData) -> str:
    """SHA-256 of the images' shape and bytes: what the front end's output depends on (labels do not matter)."""
    h = hashlib.sha256(repr(tuple(data.images.shape)).encode())
    h.update(data.images.contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def compute_features(*, front: nn.Module, data: ImageData, batch_size: int = 128) -> torch.Tensor:
    """`front` applied to every image of `data` (as model input in [-1, 1]), in batches, on the CPU."""
    front.eval()
    with torch.no_grad():
        parts = [front(data.inputs(slice(i, i + batch_size))) for i in range(0, len(data), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)


def _load(path: Path, key: str, rows: int) -> torch.Tensor | None:
    """The cached features in `path` if the file is whole and is what `key` names; None otherwise (it is recomputed)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats = blob["features"]
        ok = (blob.get("format") == CACHE_FORMAT and blob.get("key") == key and isinstance(feats, torch.Tensor)
              and len(feats) == rows and blob.get("sha256") == _tensor_digest(feats))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable cache file is recomputed, never trusted
        log.warning("feature cache %s is unreadable (%s); recomputing it", path, exc)
        return None
    if not ok:
        log.warning("feature cache %s does not match its data or transform, or is corrupt; recomputing it", path)
        return None
    return feats


def _save(path: Path, key: str, feats: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": CACHE_FORMAT, "key": key, "features": feats, "sha256": _tensor_digest(feats)}, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_features(*, front: nn.Module, front_key: str, data: ImageData, cache_dir: Path | None) -> FeatureData:
    """`front`'s output for `data`, from `cache_dir` when a valid file is there, else computed (and stored).

    The file is named by the SHA-256 of the transform's key and the images' digest,
    so other data or other transform parameters never reuse it. A file that does
    not load, names another key, or whose content hash does not match is
    recomputed and overwritten. Without `cache_dir`, nothing is stored.
    """
    key = f"{front_key}:{data_digest(data)}"
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"
        feats = _load(path, key, len(data))
        if feats is not None:
            return FeatureData(feats, data.labels, data.classes)
    feats = compute_features(front=front, data=data)
    if path is not None:
        try:
            _save(path, key, feats)
        except OSError as exc:  # a full or read-only disk costs recomputation next time, not the round
            log.warning("cannot write feature cache %s (%s); features stay in memory only", path, exc)
    return FeatureData(feats, data.labels, data.classes)
