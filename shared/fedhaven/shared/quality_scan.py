"""One streaming pass over a site's images: what each one is (size, mode, hashes, blankness) and a small thumbnail.

The pass reads one image at a time (an ImageFolder file, or a decoded row of
IDX/digits data) and keeps per image only a few fixed-size numbers: its label,
width and height, a 64-bit perceptual hash (imagehash's pHash), 16 bytes of the
SHA-256 of its decoded pixels, and whether it is nearly blank (about 40 bytes,
the same order as the labels a trainer already holds). Thumbnails for the
label check are appended to a scratch file on disk, never held together.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from fedhaven.shared.data import ImageData

#: Side of the thumbnail the label check learns from: 16x16 grey or 12x12 RGB (a few hundred numbers an image).
THUMB_GREY, THUMB_RGB = 16, 12
#: Standard deviation (0-255 grey levels, on a 64x64 thumbnail) under which an image counts as nearly blank.
BLANK_STD = 2.0


@dataclass(frozen=True)
class Item:
    """One image of a site as the scan sees it: a name to report it by, its label, and the image or why not."""

    position: int  # in the source's own order (what `Source.name` names)
    label: int
    image: Image.Image | None
    error: str | None = None
    file_bytes: int | None = None


@dataclass(frozen=True)
class Source:
    """A site's images to scan: its classes, how to name image `i`, and the images one at a time."""

    classes: tuple[str, ...]
    name: Callable[[int], str]
    items: Iterator[Item]


@dataclass
class Scan:
    """What one pass found: typed arrays for the readable images (in scan order), and the unreadable ones by name."""

    classes: tuple[str, ...]
    channels: int
    name_of: Callable[[int], str]
    position: array[int] = field(default_factory=lambda: array("q"))
    labels: array[int] = field(default_factory=lambda: array("q"))
    width: array[int] = field(default_factory=lambda: array("I"))
    height: array[int] = field(default_factory=lambda: array("I"))
    mode: array[int] = field(default_factory=lambda: array("B"))  # index into `modes`
    modes: list[str] = field(default_factory=list)
    file_bytes: array[int] = field(default_factory=lambda: array("Q"))
    phash: array[int] = field(default_factory=lambda: array("Q"))
    digest: bytearray = field(default_factory=bytearray)  # 16 bytes an image
    blank: array[int] = field(default_factory=lambda: array("B"))
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    thumbs: Path | None = None  # (N, thumb_dim) uint8, row-major, written as the pass goes

    @property
    def thumb_dim(self) -> int:
        return THUMB_GREY * THUMB_GREY if self.channels == 1 else 3 * THUMB_RGB * THUMB_RGB

    def __len__(self) -> int:
        return len(self.position)

    def name(self, i: int) -> str:
        """The name of the `i`-th readable image (its file, or its position in the data)."""
        return self.name_of(self.position[i])

    def phash_array(self) -> np.ndarray:
        return np.frombuffer(self.phash, dtype=np.uint64) if len(self.phash) else np.zeros(0, dtype=np.uint64)

    def digest_array(self) -> np.ndarray:
        """The pixel digests as (N, 2) uint64."""
        return np.frombuffer(bytes(self.digest), dtype=np.uint64).reshape(-1, 2)

    def read_thumbs(self, start: int, stop: int) -> np.ndarray:
        """Thumbnails of images [start, stop) as float32 rows, read from the scratch file."""
        if self.thumbs is None:
            raise ValueError("this scan kept no thumbnails")
        d = self.thumb_dim
        arr = np.fromfile(self.thumbs, dtype=np.uint8, count=(stop - start) * d, offset=start * d)
        return arr.reshape(-1, d).astype(np.float32)


def _thumb(img: Image.Image, channels: int) -> np.ndarray:
    from PIL import Image as PILImage

    side = THUMB_GREY if channels == 1 else THUMB_RGB
    small = img.convert("L" if channels == 1 else "RGB").resize((side, side), PILImage.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8).reshape(-1)


def _is_blank(img: Image.Image) -> bool:
    from PIL import Image as PILImage

    grey = np.asarray(img.convert("L").resize((64, 64), PILImage.Resampling.BILINEAR), dtype=np.float32)
    return float(grey.std()) < BLANK_STD


def scan(source: Source, *, channels: int, thumbs: IO[bytes] | None = None, thumbs_path: Path | None = None) -> Scan:
    """Hash and measure every image of `source`, one at a time; thumbnails go to `thumbs` when given."""
    import imagehash  # a well-kept perceptual hash (pHash: DCT of a 32x32 grey image, 64 bits)

    out = Scan(classes=source.classes, channels=channels, name_of=source.name, thumbs=thumbs_path)
    for it in source.items:
        if it.image is None:
            out.unreadable.append((source.name(it.position), it.error or "unreadable"))
            continue
        img = it.image
        try:
            img.load()
            ph = int(str(imagehash.phash(img)), 16)
            raw = img.tobytes()
            digest = hashlib.sha256(f"{img.mode}|{img.size}|".encode() + raw).digest()[:16]
            blank = _is_blank(img)
            thumb = _thumb(img, channels) if thumbs is not None else None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated or undecodable after the header
            out.unreadable.append((source.name(it.position), f"{type(exc).__name__}: {str(exc)[:80]}"))
            continue
        if img.mode not in out.modes:
            out.modes.append(img.mode)
        out.position.append(it.position)
        out.labels.append(it.label)
        out.width.append(img.size[0])
        out.height.append(img.size[1])
        out.mode.append(out.modes.index(img.mode))
        out.file_bytes.append(it.file_bytes if it.file_bytes is not None else len(raw))
        out.phash.append(ph)
        out.digest += digest
        out.blank.append(int(blank))
        if thumbs is not None and thumb is not None:
            thumbs.write(thumb.tobytes())
    if thumbs is not None:
        thumbs.flush()
    return out


def folder_source(root: Path) -> Source:
    """The classes of an ImageFolder tree and its images, opened one at a time as training's decoding opens them (a
    file PIL cannot open is an item with its error, not an exception)."""
    from fedhaven.shared.sources import PIL_REFUSALS, list_imagefolder, open_image

    samples, classes = list_imagefolder(root)

    def name(i: int) -> str:
        return str(Path(samples[i][0]).relative_to(root))

    def items() -> Iterator[Item]:
        for i, (path, target) in enumerate(samples):
            try:
                size = Path(path).stat().st_size
                img = open_image(path)
            except PIL_REFUSALS as exc:
                yield Item(position=i, label=target, image=None, error=f"{type(exc).__name__}: {str(exc)[:80]}")
                continue
            yield Item(position=i, label=target, image=img, file_bytes=size)

    return Source(classes=classes, name=name, items=items())


def data_source(data: ImageData, *, chunk: int = 1024, what: str = "image") -> Source:
    """Decoded images (IDX, digits, a simulated site's partition), a chunk of rows at a time, named by position."""

    def items() -> Iterator[Item]:
        from PIL import Image as PILImage

        n = len(data)
        for start in range(0, n, chunk):
            rows = data.images[slice(start, min(n, start + chunk))].numpy()
            labels = data.labels[start: start + len(rows)].tolist()
            for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
                img = PILImage.fromarray(row[0] if row.shape[0] == 1 else row.transpose(1, 2, 0))
                yield Item(position=start + i, label=int(label), image=img)

    return Source(classes=data.classes, name=lambda i: f"{what} #{i}", items=items())
