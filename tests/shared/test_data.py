"""Data sources: IDX (gzipped or not), the bundled MNIST, ImageFolder, scikit-learn digits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedhaven.shared.data import DataError, ImageData, to_model_input
from fedhaven.shared.schema import DataConfig
from fedhaven.shared.sources import (
    BUNDLED_MNIST,
    load_data,
    load_digits_data,
    load_idx,
    load_imagefolder,
    read_idx,
    save_idx,
)


def _write_idx(path, array: np.ndarray, *, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 6, 6), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0, 2, 2], dtype=np.uint8)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", images, gz=gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels, gz=gz)
    data = load_idx(tmp_path, split="train")
    assert data.images.shape == (7, 1, 6, 6)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist()
    assert data.classes == ("0", "1", "2")


def test_idx_errors_name_the_problem(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad", kind="labels")
    truncated = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "short", kind="labels")
    (tmp_path / "short.gz").write_bytes(gzip.compress(truncated)[:-6])  # a cut-off gzip stream
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "short.gz", kind="labels")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_idx(tmp_path, split="train")
    with pytest.raises(DataError, match="does not exist"):
        load_idx(tmp_path / "nowhere", split="train")


def test_idx_shape_and_type_problems_are_listed_together(tmp_path):
    rgb = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    _write_idx(tmp_path / "rgb", rgb, gz=False)
    with pytest.raises(DataError, match="4 dimensions, expected 3.*ImageFolder"):
        read_idx(tmp_path / "rgb", kind="images")
    wide = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + b"\x00" * 8  # int32 labels, 2 of them
    (tmp_path / "wide").write_bytes(wide)
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "wide", kind="images")
    assert "int32" in str(err.value) and "1 dimensions, expected 3" in str(err.value)


def test_idx_image_and_label_counts_must_agree(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), dtype=np.uint8), gz=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        load_idx(tmp_path, split="train")


def test_save_idx_roundtrip_and_rgb_refused(tmp_path, synthetic_images):
    save_idx(synthetic_images, tmp_path, split="test")
    back = load_idx(tmp_path, split="test")
    assert torch.equal(back.images[:], synthetic_images.images[:]) and torch.equal(back.labels, synthetic_images.labels)
    rgb = ImageData(synthetic_images.images[:].repeat(1, 3, 1, 1), synthetic_images.labels, synthetic_images.classes)
    with pytest.raises(DataError, match="ImageFolder"):
        save_idx(rgb, tmp_path, split="train")


def test_bundled_mnist_is_real_and_complete():
    assert (BUNDLED_MNIST / "README.md").exists()
    train = load_data(cfg=DataConfig(source="mnist"), split="train")
    test = load_data(cfg=DataConfig(source="mnist"), split="test")
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert train.classes == tuple(str(i) for i in range(10))
    counts = train.class_counts()
    assert min(counts.values()) > 5000  # every digit is well represented


def test_digits_split_is_deterministic_and_disjoint():
    train, test = load_digits_data(split="train"), load_digits_data(split="test")
    assert len(train) + len(test) == 1797 and len(test) == 449
    assert train.spec.image_size == 8 and train.images.dtype == torch.uint8
    assert torch.equal(load_digits_data(split="test").images[:], test.images[:])
    train_rows = {bytes(x.numpy()) for x in train.images}
    assert sum(bytes(x.numpy()) in train_rows for x in test.images) < 20  # digits has a few duplicate images


def test_imagefolder_is_resized_and_aligned(tmp_path):
    from PIL import Image

    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20 + i, 15), colour).save(tmp_path / cls / f"{i}.png")
    data = load_imagefolder(tmp_path, image_size=12, channels=3)
    assert data.images.shape == (6, 3, 12, 12) and data.classes == ("cat", "dog")
    assert data.images[data.labels == 0][:, 0].float().mean() > 200  # cats are red
    aligned = data.aligned_to(("ant", "cat", "dog"))
    assert aligned.labels.tolist() == [x + 1 for x in data.labels.tolist()]
    with pytest.raises(DataError, match="not among the task's classes"):
        data.aligned_to(("cat", "bird"))
    grey = load_imagefolder(tmp_path, image_size=8, channels=1)
    assert grey.images.shape == (6, 1, 8, 8)


def test_image_data_validation_and_normalisation():
    with pytest.raises(DataError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ("a",))
    with pytest.raises(DataError, match="labels must lie"):
        ImageData(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.tensor([3]), ("a", "b"))
    x = to_model_input(torch.tensor([0, 255], dtype=torch.uint8))
    assert x.tolist() == [-1.0, 1.0]


def test_each_source_names_the_folder_its_split_is_read_from():
    """One resolution for the readers and for `fl-server run`'s record of checked test sets."""
    from fedhaven.shared.schema import DataConfig

    assert DataConfig(source="mnist").folder("test") == BUNDLED_MNIST
    assert DataConfig(source="mnist", path="/m").folder("train") == Path("/m")
    assert DataConfig(source="idx", path="/d").folder("test") == Path("/d")
    assert DataConfig(source="digits").folder("test") is None
    tree = DataConfig(source="imagefolder", path="/tr", test_path="/te", image_size=8)
    assert (tree.folder("train"), tree.folder("test")) == (Path("/tr"), Path("/te"))
    assert DataConfig(source="imagefolder", path="/tr", image_size=8).folder("test") is None
