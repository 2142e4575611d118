"""Arrays of rows (images, features) in memory or in a file on disk, read a batch at a time: memory stays bounded.

A site's images and a fixed front end's output grow with the data (a 224x224 RGB
image is 150 KB as bytes; its features tens of KB), so everything that touches them
reads the rows a batch needs and nothing more. File-backed rows are read with
`os.preadv` into a fresh buffer, not memory-mapped: mapped pages that training
touches would stay resident in the process for as long as the mapping lives, and
the process's memory would again grow with the data.

The page cache would grow with the data too: every page read or written stays
there, clean, after the read. A file whose rows take more than
`KEEP_CACHED_BYTES` is therefore read and written past it: each range is dropped
from the page cache once read, or once written and on disk (POSIX_FADV_DONTNEED),
so the cached pages of a site's files stay under that bound whatever its number of
images. A smaller file (MNIST's per-site features) stays cached: it is read every
round.

A rows file is the raw rows (C order) followed by a JSON trailer (format, key, row
shape, dtype, count, SHA-256 of the rows, optional extra fields such as labels),
its length and a magic number. It is written to a temporary file and renamed into
place once complete, so a file in place is whole; its hash is checked when it is
opened and one that does not match is rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

log = logging.getLogger("fedhaven.data")

MAGIC = b"FHROWS01"
FORMAT = 1
_TRAILER_LEN = 8  # bytes of the little-endian trailer length before MAGIC
_HASH_CHUNK = 8 << 20
#: A rows file of at most this many bytes of rows stays in the page cache once read; a larger one does not
#: (module docstring). Bounded either way; 64 MiB keeps MNIST's per-site features (48 MB) cached.
KEEP_CACHED_BYTES = 64 << 20
#: Bytes a writer past `KEEP_CACHED_BYTES` lets accumulate before syncing them to disk and dropping their pages.
_WRITE_DROP_BYTES = 16 << 20

Index = int | slice | torch.Tensor | np.ndarray | list[int]

_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


def _positions(index: Index, n: int) -> np.ndarray:
    """Any row index (int, slice, integer or boolean tensor/array/list) as an int64 array of positions in [0, n)."""
    if isinstance(index, slice):
        return np.arange(n, dtype=np.int64)[index]
    if isinstance(index, int):
        pos = np.array([index], dtype=np.int64)
    else:
        arr = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        pos = np.flatnonzero(arr) if arr.dtype == bool else arr.astype(np.int64, copy=False).reshape(-1)
    if pos.size and (pos.min() < -n or pos.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(pos < 0, pos + n, pos)


def drop_cached(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to drop the page-cache pages of bytes [offset, offset + length) of open file `fd` (to its end
    with length 0). Clean pages go at once; written pages only once they are on disk, so a writer syncs first.
    Where posix_fadvise is missing (not Linux or another POSIX system) or refused (a pipe) the pages stay: it is
    advice, and only memory is at stake, never the data read."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class Rows:
    """An (N, *row_shape) array read by row: `rows[index]` returns a tensor of just those rows."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=self.dtype).element_size()

    def __getitem__(self, index: Index | tuple[Any, ...]) -> torch.Tensor:
        """The rows `index` names (int, slice, integer or boolean array), read now; with a tuple, the first item
        picks rows and the rest index into them, as on a tensor."""
        if isinstance(index, tuple):
            return self[index[0]][(slice(None), *index[1:])] if not isinstance(index[0], int) \
                else self[index[0]][index[1:]]
        pos = _positions(index, len(self))
        out = self._read(pos)
        return out[0] if isinstance(index, int) else out

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _, chunk in self.chunks(1024):
            yield from chunk

    def _read(self, pos: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def take(self, index: Index) -> Rows:
        """A view of some rows, in the order given (no rows are read)."""
        raise NotImplementedError

    def digest(self) -> str:
        """SHA-256 naming these rows' content in order: what a cache built from them is keyed by."""
        raise NotImplementedError

    def chunks(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, rows start..start+size) over all rows, in order."""
        for start in range(0, len(self), max(1, size)):
            yield start, self[slice(start, start + size)]

    def tensor(self) -> torch.Tensor:
        """Every row at once: only for data known to be small (tests, 8x8 digits)."""
        return self[slice(None)]


class MemoryRows(Rows):
    """Rows held in a tensor (small data: scikit-learn's digits, tests)."""

    def __init__(self, data: torch.Tensor) -> None:
        if data.dim() < 1:
            raise ValueError("rows need at least one dimension")
        self.data = data
        self.shape = tuple(data.shape)
        self.dtype = data.dtype

    def _read(self, pos: np.ndarray) -> torch.Tensor:
        return self.data[torch.from_numpy(pos)]

    def take(self, index: Index) -> Rows:
        return MemoryRows(self.data[torch.from_numpy(_positions(index, len(self)))])

    def digest(self) -> str:
        h = hashlib.sha256(f"{self.shape}|{self.dtype}".encode())
        h.update(self.data.contiguous().numpy().tobytes())
        return h.hexdigest()

    def tensor(self) -> torch.Tensor:
        return self.data


def _read_trailer(fd: int, size: int) -> dict[str, Any]:
    if size < len(MAGIC) + _TRAILER_LEN:
        raise ValueError("too short to be a rows file")
    tail = os.pread(fd, len(MAGIC) + _TRAILER_LEN, size - len(MAGIC) - _TRAILER_LEN)
    if tail[_TRAILER_LEN:] != MAGIC:
        raise ValueError("not a rows file (bad magic number)")
    length = int.from_bytes(tail[:_TRAILER_LEN], "little")
    start = size - len(MAGIC) - _TRAILER_LEN - length
    if length <= 0 or start < 0:
        raise ValueError("bad trailer length")
    meta: dict[str, Any] = json.loads(os.pread(fd, length, start))
    meta["_data_bytes"] = start
    return meta


class FileRows(Rows):
    """Rows in a rows file, read with positioned reads; a view (`take`) reads only its own rows.

    Picklable (it reopens the file by path in another process), so a site's data can
    travel to a simulation worker without its rows.
    """

    def __init__(self, path: Path, *, meta: dict[str, Any], index: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.meta = meta
        self._row_shape = tuple(int(d) for d in meta["row_shape"])
        self._np_dtype = np.dtype(meta["dtype"])
        self.dtype = _DTYPES[meta["dtype"]]
        self._row_bytes: int = int(np.prod(self._row_shape, dtype=np.int64)) * self._np_dtype.itemsize
        self.index = index
        count = int(meta["count"]) if index is None else len(index)
        self.shape = (count, *self._row_shape)
        self._uncached = self.count_bytes() > KEEP_CACHED_BYTES  # read past the page cache (module docstring)
        self._fh: IO[bytes] | None = None  # positioned reads never move its offset, so forks may share it

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]  # unpickling: a new object's set-up, reopening the file by path
            state["path"], meta=state["meta"], index=state["index"])

    def _file(self) -> int:
        if self._fh is None:
            self._fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed with this object
            if self._uncached and hasattr(os, "posix_fadvise"):
                # no readahead: pages read ahead of a Poisson batch's rows would stay cached (8 MiB a read here)
                with contextlib.suppress(OSError):  # advice, as in drop_cached
                    os.posix_fadvise(self._fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        return self._fh.fileno()

    def _read(self, pos: np.ndarray) -> torch.Tensor:
        rows = pos if self.index is None else self.index[pos]
        out = np.empty((len(rows), *self._row_shape), dtype=self._np_dtype)
        if len(rows):
            order = np.argsort(rows, kind="stable")
            sorted_rows = rows[order]
            staged = out if np.array_equal(order, np.arange(len(rows))) else np.empty_like(out)
            flat = staged.reshape(len(rows), -1).view(np.uint8)
            fd = self._file()
            # Consecutive rows are read with one call: a slice or a sorted Poisson batch is a few runs.
            breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
            for run in np.split(np.arange(len(rows)), breaks):
                first, last = run[0], run[-1]
                dest = memoryview(
                    flat[first: last + 1],  # type: ignore[arg-type]  # numpy: ndarray.__buffer__ on Python >= 3.12
                ).cast("B")
                offset = int(sorted_rows[first]) * self._row_bytes
                got = os.preadv(fd, [dest], offset)
                if got != len(dest):
                    raise OSError(f"{self.path}: short read ({got} of {len(dest)} bytes); the file changed")
                if self._uncached:
                    drop_cached(fd, offset, got)
            if staged is not out:
                out[order] = staged
        return torch.from_numpy(out)

    def count_bytes(self) -> int:
        """Bytes of every row in the file (not only this view's)."""
        return int(self.meta["count"]) * self._row_bytes

    def take(self, index: Index) -> Rows:
        pos = _positions(index, len(self))
        return FileRows(self.path, meta=self.meta, index=pos if self.index is None else self.index[pos])

    def digest(self) -> str:
        if self.index is None:
            return str(self.meta["sha256"])
        h = hashlib.sha256(str(self.meta["sha256"]).encode())
        h.update(self.index.astype("<i8").tobytes())
        return h.hexdigest()

    @property
    def extra(self) -> dict[str, Any]:
        """What the writer stored beside the rows (e.g. labels and classes)."""
        return dict(self.meta.get("extra") or {})


class RowsWriter:
    """Appends rows chunk by chunk to a temporary file; `commit` writes the trailer and renames it into place.

    With `expected_rows` (how many rows the file will hold) a file past KEEP_CACHED_BYTES leaves the page cache
    from its first bytes on; without, once it has grown past that bound.
    """

    def __init__(self, path: Path, *, key: str, row_shape: tuple[int, ...], dtype: str,
                 expected_rows: int | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.path, self.key, self.row_shape, self.dtype = Path(path), key, tuple(row_shape), dtype
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.count = 0
        self._written = 0  # bytes of rows written
        self._dropped = 0  # bytes from the start that are on disk and out of the page cache
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self._uncached = expected_rows is not None and expected_rows * row_bytes > KEEP_CACHED_BYTES

    def __enter__(self) -> RowsWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()

    def append(self, rows: torch.Tensor | np.ndarray) -> None:
        arr = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows
        arr = np.ascontiguousarray(arr.astype(self.dtype, copy=False))
        if tuple(arr.shape[1:]) != self.row_shape:
            raise ValueError(f"rows of shape {tuple(arr.shape[1:])} appended to a file of {self.row_shape}")
        data = arr.tobytes()
        self._sha.update(data)
        self._fh.write(data)
        self.count += len(arr)
        self._written += len(data)
        if self._past_bound() and self._written - self._dropped >= _WRITE_DROP_BYTES:
            self._drop_written()

    def _past_bound(self) -> bool:
        return self._uncached or self._written > KEEP_CACHED_BYTES

    def _drop_written(self) -> None:
        """Sync what was written and drop it from the page cache (a file past KEEP_CACHED_BYTES)."""
        self._fh.flush()
        os.fdatasync(self._fh.fileno())
        drop_cached(self._fh.fileno(), self._dropped, self._written - self._dropped)
        self._dropped = self._written

    def commit(self, *, extra: dict[str, Any] | None = None) -> FileRows:
        meta = {"format": FORMAT, "key": self.key, "row_shape": list(self.row_shape), "dtype": self.dtype,
                "count": self.count, "sha256": self._sha.hexdigest(), "extra": extra or {}}
        blob = json.dumps(meta, separators=(",", ":")).encode()
        self._fh.write(blob + len(blob).to_bytes(_TRAILER_LEN, "little") + MAGIC)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self._past_bound():
            drop_cached(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        rows = FileRows(self.path, meta=meta)
        meta["_data_bytes"] = rows.count_bytes()
        return rows

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


def open_rows(path: Path, *, key: str, verify: bool = True) -> FileRows | None:
    """The rows file at `path` if it is whole, names `key` and (with `verify`) its rows hash to what it says;
    None when it is absent or does not (the caller rebuilds it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        meta = _read_trailer(fd, size)
        rows = FileRows(path, meta=meta)
        problem = None
        if meta.get("format") != FORMAT or meta.get("key") != key:
            problem = "it was built from other data or settings"
        elif meta["_data_bytes"] != rows.count_bytes():
            problem = "its size does not match its header"
        elif verify and _file_sha256(fd, meta["_data_bytes"]) != meta.get("sha256"):
            problem = "its content does not match its hash"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"it is unreadable ({exc})"
    finally:
        os.close(fd)
    if problem is not None:
        log.warning("cache file %s is not used: %s; rebuilding it", path, problem)
        return None
    return rows


def _file_sha256(fd: int, length: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while offset < length:
        block = os.pread(fd, min(_HASH_CHUNK, length - offset), offset)
        if not block:
            break
        h.update(block)
        if length > KEEP_CACHED_BYTES:
            drop_cached(fd, offset, len(block))
        offset += len(block)
    return h.hexdigest()


def cache_path(folder: Path, *, key: str) -> Path:
    """The file in `folder` that holds the rows named by `key`."""
    return Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.rows"


def cached_rows(cache_dir: Path | None, *, key: str, build: Callable[[Path], FileRows]) -> FileRows:
    """The rows file named by `key` in `cache_dir`, built by `build(path)` (which commits a RowsWriter at `path`)
    when no valid one is there. Builders of the same key wait for each other (a file lock), so simulated sites
    sharing a worker pool do the work once. Without `cache_dir` the file lives in a private temporary folder."""
    path = cache_path(Path(cache_dir) if cache_dir is not None else _scratch_dir(), key=key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - held until the file is built or found
    except OSError as exc:  # a full or read-only cache folder costs the cache, not the round
        log.warning("cannot use cache folder %s (%s); using a temporary folder for this process", path.parent, exc)
        path = cache_path(_scratch_dir(), key=key)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - as above
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        found = open_rows(path, key=key)
        if found is not None:
            return found
        return build(path)


_SCRATCH: tempfile.TemporaryDirectory[str] | None = None


def _scratch_dir() -> Path:
    """A private folder for rows of callers without a cache, removed when the process exits."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = tempfile.TemporaryDirectory(prefix="fedhaven-rows-")
    return Path(_SCRATCH.name)
