"""Partitioners: IID, Dirichlet label skew, one folder per site; all deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedhaven.shared.data import DataError
from fedhaven.shared.partition import partition_dirichlet, partition_iid, site_folders


def _check_cover(parts, n):
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(n))  # every example exactly once


def test_iid_even_sizes_cover_and_determinism():
    parts = partition_iid(num_examples=103, num_sites=10, seed=1)
    assert {len(p) for p in parts} == {10, 11}
    _check_cover(parts, 103)
    again = partition_iid(num_examples=103, num_sites=10, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_iid(num_examples=103, num_sites=10, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    with pytest.raises(DataError):
        partition_iid(num_examples=3, num_sites=4, seed=0)


def _label_skew(parts, labels) -> float:
    """Mean over sites of the largest class share: 1/classes for IID, near 1 for extreme skew."""
    return float(np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]))


def test_dirichlet_skew_grows_as_alpha_falls():
    labels = np.repeat(np.arange(10), 300)
    skew_low = _label_skew(partition_dirichlet(labels=labels, num_sites=10, alpha=0.1, seed=0), labels)
    skew_high = _label_skew(partition_dirichlet(labels=labels, num_sites=10, alpha=100.0, seed=0), labels)
    iid = _label_skew(partition_iid(num_examples=len(labels), num_sites=10, seed=0), labels)
    assert skew_low > 0.4 > skew_high
    assert abs(skew_high - iid) < 0.05


def test_dirichlet_cover_min_size_and_determinism():
    labels = np.repeat(np.arange(10), 100)
    parts = partition_dirichlet(labels=labels, num_sites=8, alpha=0.3, seed=5, min_size=10)
    _check_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 10
    again = partition_dirichlet(labels=labels, num_sites=8, alpha=0.3, seed=5, min_size=10)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    with pytest.raises(DataError, match="alpha"):
        partition_dirichlet(labels=labels, num_sites=8, alpha=0.0, seed=0)
    with pytest.raises(DataError, match="at least"):
        partition_dirichlet(labels=labels[:50], num_sites=8, alpha=0.3, seed=0, min_size=10)


def test_site_folders(tmp_path):
    for name in ("hospital-b", "hospital-a", "hospital-c"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in site_folders(tmp_path, num_sites=2)] == ["hospital-a", "hospital-b"]
    with pytest.raises(DataError, match="found 3 site folders, need 4"):
        site_folders(tmp_path, num_sites=4)
