"""Data sources (IDX/MNIST, ImageFolder, scikit-learn digits), decoded once, in chunks, into a rows file on disk.

Images are never held all at once: IDX payloads are streamed out of the
(gzipped) file and ImageFolder trees decoded `DECODE_CHUNK` images at a time,
each chunk appended to a rows file in the cache folder (`fedhaven.shared.rows`).
The file is named by what it was decoded from (each file's path, size and
modification time, and the resize settings), so an unchanged source is decoded
once and a changed one again; a caller without a cache folder gets a private
temporary one. Only labels (8 bytes per image) stay in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from fedhaven.shared.data import DataError, ImageData
from fedhaven.shared.rows import FileRows, MemoryRows, RowsWriter, cached_rows, drop_cached
from fedhaven.shared.schema import BUNDLED_MNIST, DataConfig

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["BUNDLED_MNIST", "DECODE_CHUNK", "PIL_REFUSALS", "Split", "list_imagefolder", "load_data",
           "load_digits_data", "load_idx", "load_imagefolder", "open_image", "read_idx", "save_idx"]

Split = Literal["train", "test"]
T = TypeVar("T")

#: What PIL raises for a file it cannot read: unreadable, truncated, not an image, a decompression bomb.
PIL_REFUSALS: tuple[type[Exception], ...] = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: Images decoded per chunk (a 224x224 RGB chunk is 38 MB as bytes).
DECODE_CHUNK = 256
#: Bump when decoding produces other pixels for the same files.
DECODE_VERSION = 1

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_open(p: Path) -> io.BufferedIOBase:
    try:
        return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    except OSError as exc:
        raise DataError(f"cannot read IDX file {p}: {exc}") from None


def _idx_read(fh: io.BufferedIOBase, n: int, p: Path) -> bytes:
    try:
        return fh.read(n)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {p}: {exc}") from None


def _idx_header(fh: io.BufferedIOBase, p: Path, *, ndim: int) -> tuple[list[int], list[str]]:
    """(dims, problems) of an IDX file's header for an MNIST-format `ndim`-D uint8 array."""
    raw = _idx_read(fh, 4, p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        return [], [f"{p} is not an IDX file (bad magic number)"]
    out = []
    if raw[2] != 0x08:
        out.append(f"{p}: holds {np.dtype(_IDX_DTYPES[raw[2]]).name} values; MNIST-format images and labels are uint8")
    if raw[3] != ndim:
        out.append(f"{p}: has {raw[3]} dimensions, expected {ndim} ("
                   + ("N, height, width: one grey channel; use an ImageFolder tree for RGB)" if ndim == 3 else "N)"))
    head = _idx_read(fh, 4 * raw[3], p)
    dims = [int.from_bytes(head[4 * i: 4 + 4 * i], "big") for i in range(len(head) // 4)]
    if len(dims) != raw[3]:
        return dims, [*out, f"{p}: header says {raw[3]} dimensions but the file ends inside the header"]
    if dims and dims[0] == 0:  # nothing to train on (and no array to shape)
        out.append(f"{p}: holds no {'images' if ndim == 3 else 'labels'} (N = 0)")
    return dims, out


def _size_problem(p: Path, dims: list[int], held: int) -> str:
    expected = 4 + 4 * len(dims) + int(np.prod(dims))
    return f"{p}: header says {dims} but the file holds {held} bytes, expected {expected}"


def read_idx(path: str | Path, *, kind: Literal["images", "labels"]) -> torch.Tensor:
    """One MNIST-format IDX file (gzipped or not), read into memory: uint8 images (N, H, W) or int64 labels (N,).

    For labels and small files; `load_idx` streams images into a rows file instead.
    The header is checked first (magic number, uint8, dimensions, size), so a bad
    file gets an error that names it and the problem.
    """
    p = Path(path)
    ndim = 3 if kind == "images" else 1
    with _idx_open(p) as fh:
        dims, problems = _idx_header(fh, p, ndim=ndim)
        if problems:
            raise DataError("; ".join(problems))
        payload = _idx_read(fh, -1, p)
    if len(payload) != int(np.prod(dims)):
        raise DataError(_size_problem(p, dims, 4 + 4 * ndim + len(payload)))
    arr = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).reshape(dims).copy())
    return arr if kind == "images" else arr.long()


def _stamp(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _idx_image_rows(p: Path, cache_dir: Path | None) -> FileRows:
    """An IDX image file streamed into a rows file of (1, H, W) rows, a few megabytes at a time."""
    key = f"idx-images-v{DECODE_VERSION}|{_stamp(p)}"

    def build(dest: Path) -> FileRows:
        with _idx_open(p) as fh:
            dims, problems = _idx_header(fh, p, ndim=3)
            if problems:
                raise DataError("; ".join(problems))
            n, h, w = dims
            per = max(1, (8 << 20) // max(1, h * w))
            with RowsWriter(dest, key=key, row_shape=(1, h, w), dtype="uint8", expected_rows=n) as out:
                done = 0
                while done < n:
                    k = min(per, n - done)
                    buf = _idx_read(fh, k * h * w, p)
                    if len(buf) != k * h * w:
                        raise DataError(_size_problem(p, dims, 16 + done * h * w + len(buf)))
                    out.append(np.frombuffer(buf, dtype=np.uint8).reshape(k, 1, h, w))
                    done += k
                rest = len(_idx_read(fh, -1, p))
                if rest:
                    raise DataError(_size_problem(p, dims, 16 + n * h * w + rest))
                return out.commit()

    return cached_rows(cache_dir, key=key, build=build)


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
    n, _, h, w = data.images.shape
    labels = data.labels.numpy().astype(np.uint8)
    for name, dims, chunks in ((f"{prefix}-images-idx3-ubyte.gz", (n, h, w),
                                (c.numpy() for _, c in data.images.chunks(DECODE_CHUNK * 16))),
                               (f"{prefix}-labels-idx1-ubyte.gz", (n,), iter([labels]))):
        with gzip.open(base / name, "wb") as fh:
            fh.write(bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims))
            for chunk in chunks:
                fh.write(np.ascontiguousarray(chunk).tobytes())


def load_idx(root: str | Path, *, split: Split, cache_dir: Path | None = None) -> ImageData:
    """MNIST-format IDX files in `root`: `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"IDX data folder {base} does not exist")
    prefix = _IDX_PREFIX[split]
    labels = read_idx(_find_idx(base, f"{prefix}-labels-idx1-ubyte"), kind="labels")
    images = _idx_image_rows(_find_idx(base, f"{prefix}-images-idx3-ubyte"), cache_dir)
    if len(images) != len(labels):
        raise DataError(f"{base}: {len(images)} images but {len(labels)} labels in the {split} files")
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return ImageData(images, labels, tuple(str(i) for i in range(n_classes)))


def open_image(path: str | Path) -> Image.Image:
    """One image file, loaded into memory. The file is read once, so its pages leave the page cache after (a site's
    image files would otherwise stay cached, as many as it has). Raises what PIL raises (`PIL_REFUSALS`)."""
    with open(path, "rb") as fh:
        img = Image.open(fh)
        img.load()  # the pixels are in memory now: usable once the file is closed, without a copy
        drop_cached(fh.fileno())
    return img


def _decode(path: str, *, mode: str, size: int) -> np.ndarray:
    """One image file as uint8 (C, size, size): converted to `mode`, resized as torchvision's Resize does (PIL
    bilinear with antialiasing)."""
    im = open_image(path).convert(mode)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def list_imagefolder(root: str | Path) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """An ImageFolder tree's (file, class index) pairs and class names, without opening any image."""
    from torchvision.datasets import ImageFolder  # the listing only: which files, which classes

    base = Path(root)
    if not base.is_dir():
        raise DataError(f"ImageFolder root {base} does not exist")
    try:
        folder = ImageFolder(str(base))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"{base}: not an ImageFolder tree (one sub-folder of images per class): {exc}") from None
    return list(folder.samples), tuple(folder.classes)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def load_imagefolder(root: str | Path, *, image_size: int, channels: int = 3,
                     cache_dir: Path | None = None) -> ImageData:
    """An ImageFolder tree (`root/<class>/<image>`), resized to `image_size` squares, decoded in chunks into a
    rows file (once per version of the tree). Every unreadable file is named in one error."""
    base = Path(root)
    samples, classes = list_imagefolder(base)
    labels = torch.tensor([t for _, t in samples], dtype=torch.int64)
    h = hashlib.sha256(f"imagefolder-v{DECODE_VERSION}|{image_size}|{channels}".encode())
    for path, target in samples:
        try:
            st = Path(path).stat()
            h.update(f"{Path(path).relative_to(base)}|{target}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    key = f"imagefolder|{base.resolve()}|{h.hexdigest()}"
    mode = "L" if channels == 1 else "RGB"

    def build(dest: Path) -> FileRows:
        bad: list[str] = []
        with RowsWriter(dest, key=key, row_shape=(channels, image_size, image_size), dtype="uint8",
                        expected_rows=len(samples)) as out:
            for chunk in _chunks(samples, DECODE_CHUNK):
                arr = np.zeros((len(chunk), channels, image_size, image_size), dtype=np.uint8)
                for i, (path, _) in enumerate(chunk):
                    try:
                        arr[i] = _decode(path, mode=mode, size=image_size)
                    except PIL_REFUSALS as exc:
                        bad.append(f"{Path(path).relative_to(base)} ({type(exc).__name__}: {str(exc)[:80]})")
                if not bad:
                    out.append(arr)
            if bad:
                shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
                raise DataError(f"{base}: {len(bad)} of {len(samples)} image files cannot be read: {shown}. Remove "
                                "or replace them (every file under a class folder with an image extension is read)")
            return out.commit()

    return ImageData(cached_rows(cache_dir, key=key, build=build), labels, classes)


def load_digits_data(*, split: Split, test_fraction: float = 0.25, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 115 KB), split deterministically, held in memory."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255 / 16)), 0, 255).astype(np.uint8)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return ImageData(MemoryRows(torch.from_numpy(images[idx])), torch.from_numpy(bunch.target[idx].astype(np.int64)),
                     tuple(str(i) for i in range(10)))


def load_data(*, cfg: DataConfig, split: Split, cache_dir: Path | None = None) -> ImageData:
    """The `split` of the source `cfg` describes; files are decoded into `cache_dir` (see the module docstring)."""
    if cfg.source == "digits":
        return load_digits_data(split=split)
    root = cfg.folder(split)
    if cfg.source in ("mnist", "idx"):
        return load_idx(root or "", split=split, cache_dir=cache_dir)
    if root is None:
        raise DataError("imagefolder: no test_path is set, so there is no held-out test set")
    return load_imagefolder(root, image_size=cfg.image_size or 32, channels=cfg.channels or 3, cache_dir=cache_dir)
