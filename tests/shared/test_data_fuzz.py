"""Fuzzed data folders (ImageFolder trees and IDX files): the data loads, or one DataError lists what is wrong."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fedhaven.shared.data import DataError
from fedhaven.shared.sources import load_idx, load_imagefolder

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _png(mode: str, w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (w, h)).save(out, format="PNG")
    return out.getvalue()


_file = st.one_of(
    st.builds(_png, st.sampled_from(["L", "RGB", "RGBA", "P", "1"]), st.integers(1, 40), st.integers(1, 40)),
    st.binary(max_size=200),                                      # garbage
    st.just(b""),                                                 # empty
    st.builds(lambda n: _png("RGB", 16, 16)[:n], st.integers(8, 60)),  # truncated
)
_tree = st.dictionaries(st.from_regex(r"[a-z0-9_]{1,6}", fullmatch=True),
                        st.lists(st.tuples(_file, st.sampled_from([".png", ".jpg", ".txt", ""])), max_size=3),
                        max_size=3)


@FUZZ
@given(tree=_tree, size=st.integers(4, 32), channels=st.sampled_from([1, 3]))
def test_an_imagefolder_tree_loads_or_names_every_bad_file(tree, size, channels):
    root = Path(tempfile.mkdtemp())
    try:
        readable = 0
        for cls, files in tree.items():
            (root / cls).mkdir()
            for i, (content, ext) in enumerate(files):
                (root / cls / f"f{i}{ext}").write_bytes(content)
        try:
            data = load_imagefolder(root, image_size=size, channels=channels)
        except DataError as exc:
            assert str(root) in str(exc)  # names where the problem is
            return
        readable = len(data.labels)
        assert data.images.shape == (readable, channels, size, size) and len(data.classes) >= 1
    finally:
        shutil.rmtree(root)


def test_every_unreadable_image_is_named_at_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "good.png").write_bytes(_png("L", 8, 8))
    for i in range(3):
        (tmp_path / "a" / f"bad{i}.png").write_bytes(b"not a png")
    try:
        load_imagefolder(tmp_path, image_size=8, channels=1)
    except DataError as exc:
        assert "3 of 4 image files cannot be read" in str(exc)
        assert all(f"bad{i}.png" in str(exc) for i in range(3)) and "Remove or replace" in str(exc)
    else:
        raise AssertionError("unreadable images were accepted")


def test_a_decompression_bomb_is_named_with_the_unreadable_files(tmp_path, monkeypatch):
    """PIL refuses an image over twice its pixel limit with DecompressionBombError (not an OSError): named like any
    unreadable file, never a crash halfway through decoding."""
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "small.png").write_bytes(_png("L", 8, 8))
    (tmp_path / "a" / "huge.png").write_bytes(_png("L", 64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice the limit, 8x8 is not
    try:
        load_imagefolder(tmp_path, image_size=8, channels=1)
    except DataError as exc:
        assert "1 of 2 image files cannot be read" in str(exc) and "huge.png (DecompressionBombError" in str(exc)
    else:
        raise AssertionError("a decompression bomb was decoded")


def _idx(kind: str, n: int, *, corrupt: bytes | None) -> bytes:
    if corrupt is not None:
        return corrupt
    if kind == "images":
        return struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + bytes(n * 28 * 28)
    return struct.pack(">HBBI", 0, 8, 1, n) + bytes(n)


@FUZZ
@given(n_img=st.integers(0, 3), n_lab=st.integers(0, 3), gz=st.booleans(),
       bad_img=st.one_of(st.none(), st.binary(max_size=40)), bad_lab=st.one_of(st.none(), st.binary(max_size=20)),
       missing=st.sampled_from(["", "images", "labels"]))
def test_idx_files_load_or_say_what_is_wrong(n_img, n_lab, gz, bad_img, bad_lab, missing):
    root = Path(tempfile.mkdtemp())
    try:
        for kind, stem, n, bad in (("images", "train-images-idx3-ubyte", n_img, bad_img),
                                   ("labels", "train-labels-idx1-ubyte", n_lab, bad_lab)):
            if kind == missing:
                continue
            raw = _idx(kind, n, corrupt=bad)
            (root / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
        try:
            data = load_idx(root, split="train")
        except DataError as exc:
            assert str(root) in str(exc) or "IDX" in str(exc)
            return
        assert len(data.images) == len(data.labels) == n_img == n_lab > 0
    finally:
        shutil.rmtree(root)
