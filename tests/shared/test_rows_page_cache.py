"""A rows file past KEEP_CACHED_BYTES leaves the page cache as it is written, hashed and read; a smaller one stays;
decoded image files leave it too. So a site's cached pages do not grow with its number of images.

Residency is the kernel's own count through util-linux's `fincore` (mincore(2)), not a hand-written mincore call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from fedhaven.shared import rows as rows_mod
from fedhaven.shared.rows import RowsWriter, drop_cached, open_rows
from fedhaven.shared.sources import load_imagefolder

KIB = 1 << 10
ROW = (16, 1024)  # float32: 64 KiB a row


def _resident(path) -> int:
    out = subprocess.run(["fincore", "--json", "--bytes", "--output", "RES", str(path)], capture_output=True,
                         text=True, check=True)
    return int(json.loads(out.stdout)["fincore"][0]["res"])


def _read_all(path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 20):
            pass


@pytest.fixture
def page_cache(tmp_path):
    """Skips where residency cannot be observed or pages cannot be dropped (no fincore; tmpfs keeps file pages)."""
    if shutil.which("fincore") is None:
        pytest.skip("util-linux fincore is not installed")
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(256 * KIB))
    _read_all(probe)
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(fd)
        drop_cached(fd)
    finally:
        os.close(fd)
    if _resident(probe) > 0:
        pytest.skip(f"{tmp_path}'s file system keeps file pages in memory (tmpfs?)")
    return tmp_path


def _write(path, n: int) -> np.ndarray:
    data = np.random.default_rng(0).standard_normal((n, *ROW)).astype(np.float32)
    with RowsWriter(path, key="k", row_shape=ROW, dtype="float32") as out:
        for start in range(0, n, 4):
            out.append(data[start: start + 4])
        out.commit()
    return data


def test_a_large_file_leaves_the_page_cache_as_it_is_written_and_read(page_cache, monkeypatch):
    monkeypatch.setattr(rows_mod, "KEEP_CACHED_BYTES", 1 << 20)
    monkeypatch.setattr(rows_mod, "_WRITE_DROP_BYTES", 256 * KIB)
    path = page_cache / "big.rows"
    data = _write(path, 64)  # 4 MiB of rows
    assert _resident(path) <= 64 * KIB, "written rows stayed in the page cache"
    rows = open_rows(path, key="k")  # hashes every row
    assert rows is not None
    assert _resident(path) <= 64 * KIB, "the hash check left the rows in the page cache"
    index = np.sort(np.random.default_rng(1).choice(64, 20, replace=False))
    np.testing.assert_array_equal(rows[index].numpy(), data[index])
    np.testing.assert_array_equal(rows[slice(10, 30)].numpy(), data[10:30])
    # what the kernel read ahead past a batch's span may stay: a few pages, not the 2.5 MiB read
    assert _resident(path) <= 256 * KIB, f"{_resident(path)} bytes of read rows stayed in the page cache"


def test_a_writer_told_its_size_drops_from_the_first_bytes(page_cache, monkeypatch):
    monkeypatch.setattr(rows_mod, "KEEP_CACHED_BYTES", 1 << 20)
    monkeypatch.setattr(rows_mod, "_WRITE_DROP_BYTES", 256 * KIB)
    folder = page_cache / "w"
    data = np.zeros((12, *ROW), dtype=np.float32)
    with RowsWriter(folder / "x.rows", key="k", row_shape=ROW, dtype="float32", expected_rows=64) as out:
        out.append(data)  # 768 KiB: under the bound, but the file will not be
        (part,) = folder.glob("*.part")
        assert _resident(part) == 0
        out.abort()


def test_a_small_file_stays_in_the_page_cache(page_cache):
    path = page_cache / "small.rows"
    _write(path, 8)  # 512 KiB, under KEEP_CACHED_BYTES
    rows = open_rows(path, key="k")
    assert rows is not None
    rows[slice(0, 8)]
    assert _resident(path) >= 8 * 64 * KIB  # read every round: kept


def test_decoded_image_files_leave_the_page_cache(page_cache):
    tree = page_cache / "tree"
    files = []
    for i in range(4):
        f = tree / f"class{i % 2}" / f"{i}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(f)
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)  # on disk, as a site's files are: only clean pages can be dropped
        os.close(fd)
        _read_all(f)
        assert _resident(f) > 0
        files.append(f)
    data = load_imagefolder(tree, image_size=32, channels=3, cache_dir=page_cache / "cache")
    assert len(data) == 4
    assert [_resident(f) for f in files] == [0, 0, 0, 0]
