"""Image data sources (IDX/MNIST, ImageFolder, scikit-learn digits) loaded into memory as uint8 tensors."""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fedhaven.shared.schema import BUNDLED_MNIST, DataConfig, InputSpec  # noqa: F401 (BUNDLED_MNIST: re-exported)

Split = Literal["train", "test"]

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Data that is missing, unreadable, or not shaped the way the task needs."""


@dataclass(frozen=True)
class ImageData:
    """Images as uint8 (N, C, H, W) with int64 labels in [0, len(classes))."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        problems = []
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            problems.append(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            problems.append(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        elif self.images.dim() == 4 and len(self.labels) != len(self.images):
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
        return ImageData(self.images[idx], self.labels[idx], self.classes)

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

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The model's input for examples `index`: floats in [-1, 1] (see `to_model_input`)."""
        return to_model_input(self.images[index])


@dataclass(frozen=True)
class FeatureData:
    """Float features (N, ...) with labels: what a model's trainable head sees after a fixed front end.

    Same interface as ImageData for training and evaluation (`inputs`, `labels`, `classes`, `len`).
    """

    features: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.features.is_floating_point() or len(self.features) != len(self.labels):
            raise DataError(f"features must be floats with one row per label, got {self.features.dtype} "
                            f"{tuple(self.features.shape)} for {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.features[index].float()

    def subset(self, index: np.ndarray | torch.Tensor) -> FeatureData:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.int64)
        return FeatureData(self.features[idx], self.labels[idx], self.classes)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], the one normalisation every source shares.

    The result always has row-major strides: a (N, 1, H, W) tensor sliced from
    numpy can carry an odd stride on its size-1 channel axis, which torch's
    expanded-weights convolution (Opacus' "ew" mode) cannot view.
    """
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    return out.copy_(images).div_(127.5).sub_(1.0)


def _idx_bytes(p: Path) -> bytes:
    try:
        return gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {p}: {exc}") from None


def _idx_problems(raw: bytes, p: Path, *, ndim: int) -> list[str]:
    """What is wrong with an IDX file's header for an MNIST-format `ndim`-D uint8 array (empty when fine)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        return [f"{p} is not an IDX file (bad magic number)"]
    out = []
    if raw[2] != 0x08:
        out.append(f"{p}: holds {np.dtype(_IDX_DTYPES[raw[2]]).name} values; MNIST-format images and labels are uint8")
    if raw[3] != ndim:
        out.append(f"{p}: has {raw[3]} dimensions, expected {ndim} ("
                   + ("N, height, width: one grey channel; use an ImageFolder tree for RGB)" if ndim == 3 else "N)"))
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    if dims and dims[0] == 0:  # nothing to train on (and no array to shape)
        out.append(f"{p}: holds no {'images' if ndim == 3 else 'labels'} (N = 0)")
    expected = 4 + 4 * raw[3] + int(np.prod(dims)) * np.dtype(_IDX_DTYPES[raw[2]]).itemsize
    if len(raw) != expected:
        out.append(f"{p}: header says {dims} but the file holds {len(raw)} bytes, expected {expected}")
    return out


def read_idx(path: str | Path, *, kind: Literal["images", "labels"]) -> torch.Tensor:
    """One MNIST-format IDX file (gzipped or not): uint8 images (N, H, W) or int64 labels (N,).

    The header is checked first (magic number, uint8, dimensions, size), so a bad file gets an error that names it
    and the problem; the checked payload is then one numpy view. (torchvision's MNIST readers do the same but
    importing torchvision costs seconds in every process that reads a site's data.)
    """
    p = Path(path)
    raw = _idx_bytes(p)
    ndim = 3 if kind == "images" else 1
    problems = _idx_problems(raw, p, ndim=ndim)
    if problems:
        raise DataError("; ".join(problems))
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy())
    return arr if kind == "images" else arr.long()


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem, f"{stem.replace('-idx', '.idx')}.gz", stem.replace("-idx", ".idx")):
        if (root / name).exists():
            return root / name
    raise DataError(f"{root}: no IDX file named {stem}[.gz]; expected MNIST file names "
                    f"(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)")


def save_idx(data: ImageData, root: str | Path, *, split: Split) -> None:
    """Write grey `data` as gzipped MNIST-format IDX files in `root` (what `load_idx` reads back)."""
    if data.images.shape[1] != 1:
        raise DataError(f"MNIST-format IDX files hold grey images, got {data.images.shape[1]} channels; "
                        f"keep RGB data as an ImageFolder tree")
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    prefix = _IDX_PREFIX[split]
    images = data.images.numpy()[:, 0]
    labels = data.labels.numpy().astype(np.uint8)
    for name, arr in ((f"{prefix}-images-idx3-ubyte.gz", images), (f"{prefix}-labels-idx1-ubyte.gz", labels)):
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (base / name).write_bytes(gzip.compress(header + np.ascontiguousarray(arr).tobytes()))


def load_idx(root: str | Path, *, split: Split) -> ImageData:
    """MNIST-format IDX files in `root`: `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"IDX data folder {base} does not exist")
    prefix = _IDX_PREFIX[split]
    images = read_idx(_find_idx(base, f"{prefix}-images-idx3-ubyte"), kind="images")
    labels = read_idx(_find_idx(base, f"{prefix}-labels-idx1-ubyte"), kind="labels")
    if len(images) != len(labels):
        raise DataError(f"{base}: {len(images)} images but {len(labels)} labels in the {split} files")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return ImageData(images[:, None].contiguous(), labels, tuple(str(i) for i in range(n_classes)))


def load_imagefolder(root: str | Path, *, image_size: int, channels: int = 3) -> ImageData:
    """An ImageFolder tree (`root/<class>/<image>`), resized to `image_size` squares."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    base = Path(root)
    if not base.is_dir():
        raise DataError(f"ImageFolder root {base} does not exist")
    mode = "L" if channels == 1 else "RGB"
    tf = transforms.Compose([transforms.Lambda(lambda im: im.convert(mode)),
                             transforms.Resize((image_size, image_size)), transforms.PILToTensor()])
    try:
        folder = ImageFolder(str(base), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{base}: not an ImageFolder tree (one sub-folder of images per class): {exc}") from None
    loaded, bad = [], []
    for i, (path, _) in enumerate(folder.samples):
        try:
            loaded.append(folder[i][0])
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: unreadable, truncated or not an image at all
            bad.append(f"{Path(path).relative_to(base)} ({type(exc).__name__}: {str(exc)[:80]})")
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{base}: {len(bad)} of {len(folder.samples)} image files cannot be read: {shown}. "
                        "Remove or replace them (every file under a class folder with an image extension is read)")
    images = torch.stack(loaded) if loaded else torch.zeros(0, channels, image_size, image_size, dtype=torch.uint8)
    labels = torch.tensor([t for _, t in folder.samples], dtype=torch.int64)
    return ImageData(images, labels, tuple(folder.classes))


def load_digits_data(*, split: Split, test_fraction: float = 0.25, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images), split deterministically."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return ImageData(torch.from_numpy(images[idx]), torch.from_numpy(bunch.target[idx].astype(np.int64)),
                     tuple(str(i) for i in range(10)))


def load_data(*, cfg: DataConfig, split: Split) -> ImageData:
    """The `split` of the source `cfg` describes."""
    if cfg.source == "digits":
        return load_digits_data(split=split)
    root = cfg.folder(split)
    if cfg.source in ("mnist", "idx"):
        return load_idx(root or "", split=split)
    if root is None:
        raise DataError("imagefolder: no test_path is set, so there is no held-out test set")
    return load_imagefolder(root, image_size=cfg.image_size or 32, channels=cfg.channels or 3)
