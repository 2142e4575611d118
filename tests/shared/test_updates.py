"""Model updates as vectors: the rotation keeps norms and flattens spikes; encode/decode; shape and NaN checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedhaven.shared import updates as u

LIKE = [np.zeros((6, 1, 5, 5), dtype=np.float32), np.zeros(6, dtype=np.float32), np.zeros((10, 7), dtype=np.float32)]


def _weights(seed: int, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, scale, a.shape).astype(np.float32) for a in LIKE]


def test_rotation_is_orthonormal_and_inverted_exactly():
    rng = np.random.default_rng(0)
    for n in (1, 5, 64, 1000):
        x = rng.normal(size=n)
        y = u.rotate(x, seed=3)
        assert y.shape == (u.padded_length(n),)
        assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
        back, padding = u.unrotate(y, seed=3, length=n)
        assert np.allclose(back, x, atol=1e-12) and padding < 1e-10
        other, _ = u.unrotate(y, seed=4, length=n)  # the seed matters: another one does not invert it
        assert n == 1 or not np.allclose(other, x)


def test_rotation_flattens_a_spike_so_a_per_coordinate_clip_leaves_it_alone():
    n = 4096
    spike = np.zeros(n)
    spike[17] = 10.0  # all the norm in one coordinate: a per-coordinate clip at 3 * 10 / 64 would cut it to 0.47
    rotated = u.rotate(spike, seed=1)
    c = u.coordinate_range(bound=10.0, length=n, factor=3.0)
    assert np.abs(rotated).max() <= c  # every coordinate is 10 / sqrt(n): nothing is clipped
    # whatever a site sends, clipped per coordinate at c, has L2 norm at most factor * bound
    anything = np.clip(np.random.default_rng(0).normal(0, 100, n), -c, c)
    assert np.linalg.norm(anything) <= 3.0 * 10.0 + 1e-9


def test_encode_then_decode_gives_back_the_delta():
    start, new = _weights(0), _weights(1)
    want = u.subtract(new, start)
    for encoding in ("delta", "rotated"):
        sent = u.encode(new, start, encoding=encoding, seed=9)
        assert [tuple(a.shape) for a in sent] == u.expected_shapes(start, encoding=encoding)
        assert u.shape_problems(sent, start, encoding=encoding) == []
        delta, padding = u.decode_delta(sent, start, encoding=encoding, seed=9)
        assert all(np.allclose(d, w, atol=1e-5) for d, w in zip(delta, want, strict=True)) and padding < 1e-4
    assert u.encode(new, start, encoding="weights", seed=0)[0] is not None


def test_clip_l2_bounds_the_norm_and_keeps_small_updates():
    big = [a * 100 for a in _weights(2)]
    clipped, before = u.clip_l2(big, 5.0)
    assert before > 5.0 and u.l2_norm(clipped) == pytest.approx(5.0, rel=1e-5)
    small = [a * 1e-3 for a in _weights(3)]
    same, _ = u.clip_l2(small, 5.0)
    assert all(np.array_equal(a, b) for a, b in zip(same, small, strict=True))
    unbounded, _ = u.clip_l2(big, math.inf)
    assert u.l2_norm(unbounded) == pytest.approx(u.l2_norm(big))


def test_shape_dtype_and_nonfinite_problems_are_named():
    start = _weights(0)
    assert "2 arrays where 3 were expected" in u.shape_problems(start[:2], start, encoding="delta")[0]
    wrong = [start[0], np.zeros(7, dtype=np.float32), start[2]]
    assert "array 1 has shape (7,), expected (6,)" in u.shape_problems(wrong, start, encoding="delta")[0]
    ints = [a.astype(np.int32) for a in start]
    assert "dtype int32" in u.shape_problems(ints, start, encoding="delta")[0]
    assert u.shape_problems(start, start, encoding="rotated") == ["3 arrays where 1 were expected"]
    bad = [a.copy() for a in start]
    bad[0][0, 0, 0, 0], bad[2][1, 1] = np.nan, np.inf
    assert u.nonfinite(bad) == "1 NaN, 1 infinite value(s) of 226" and u.nonfinite(start) is None
