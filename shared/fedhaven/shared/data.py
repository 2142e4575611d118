"""A task's data as typed objects: uint8 images or a front end's features, with labels and class names."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from fedhaven.shared.rows import Index, MemoryRows, Rows
from fedhaven.shared.schema import InputSpec


class DataError(ValueError):
    """Data that is missing, unreadable, or not shaped the way the task needs."""


@dataclass(frozen=True)
class ImageData:
    """uint8 images (N, C, H, W), in memory or in a rows file on disk, with int64 labels in [0, len(classes)).

    `images` is a `Rows`: reading `images[index]` loads only those images, so a
    site's memory does not grow with its number of images. A tensor given as
    `images` is held in memory (small data: digits, tests).
    """

    images: Rows
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.images, torch.Tensor):
            object.__setattr__(self, "images", MemoryRows(self.images))
        problems = []
        if self.images.dtype != torch.uint8 or len(self.images.shape) != 4:
            problems.append(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            problems.append(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        elif len(self.images.shape) == 4 and len(self.labels) != len(self.images):
            problems.append(f"{len(self.images)} images but {len(self.labels)} labels")
        elif len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            problems.append(f"labels must lie in [0, {len(self.classes)})")
        if problems:
            raise DataError("; ".join(problems))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def spec(self) -> InputSpec:
        """The model input this data needs."""
        _, c, h, w = self.images.shape
        if h != w:
            raise DataError(f"images must be square, got {h}x{w}; set image_size to resize them")
        return InputSpec(channels=c, image_size=h, num_classes=len(self.classes))

    def subset(self, index: np.ndarray | torch.Tensor) -> ImageData:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        return ImageData(self.images.take(idx), self.labels[idx], self.classes)

    def aligned_to(self, classes: tuple[str, ...]) -> ImageData:
        """The same images labelled by position in `classes` (matched by name), e.g. the coordinator's class list."""
        if classes == self.classes:
            return self
        unknown = [c for c in self.classes if c not in classes]
        if unknown:
            raise DataError(f"classes {unknown} are not among the task's classes {list(classes)}; "
                            f"rename or remove those folders")
        mapping = torch.tensor([classes.index(c) for c in self.classes], dtype=torch.int64)
        return ImageData(self.images, mapping[self.labels] if len(self.labels) else self.labels, classes)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels.tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def inputs(self, index: Index) -> torch.Tensor:
        """The model's input for examples `index`: floats in [-1, 1] (see `to_model_input`)."""
        return to_model_input(self.images[index])

    def digest(self) -> str:
        """SHA-256 naming the images' content (labels do not matter): what derived caches are keyed by."""
        return self.images.digest()


@dataclass(frozen=True)
class FeatureData:
    """Float features (N, ...) with labels: what a model's trainable head sees after a fixed front end.

    Same interface as ImageData for training and evaluation (`inputs`, `labels`, `classes`, `len`);
    `features` is a `Rows` (usually half precision in a file), read a batch at a time.
    """

    features: Rows
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.features, torch.Tensor):
            object.__setattr__(self, "features", MemoryRows(self.features))
        if not self.features.dtype.is_floating_point or len(self.features) != len(self.labels):
            raise DataError(f"features must be floats with one row per label, got {self.features.dtype} "
                            f"{tuple(self.features.shape)} for {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: Index) -> torch.Tensor:
        return self.features[index].float()

    def subset(self, index: np.ndarray | torch.Tensor) -> FeatureData:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        return FeatureData(self.features.take(idx), self.labels[idx], self.classes)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], the one normalisation every source shares.

    The result always has row-major strides: a (N, 1, H, W) tensor sliced from
    numpy can carry an odd stride on its size-1 channel axis, which torch's
    expanded-weights convolution (Opacus' "ew" mode) cannot view.
    """
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    return out.copy_(images).div_(127.5).sub_(1.0)
