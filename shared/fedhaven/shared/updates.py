"""A model update as one vector: its delta, its L2 bound, and the random rotation that flattens it for SecAgg+.

Plain numpy, shared by the site (which bounds and encodes what it sends) and the coordinator
(which decodes and checks the aggregate). The rotation is a Walsh-Hadamard transform with
random signs, orthonormal (it keeps L2 norms), applied to the update zero-padded to the next
power of two (Kairouz, Liu and Steinke 2021 flatten updates this way before modular
clipping). After it, every coordinate of an update of norm N is about N / sqrt(length), so
SecAgg+'s per-coordinate clip at a few times bound / sqrt(length) leaves honest updates alone
while it bounds the L2 norm of anything a site sends by clip * sqrt(length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: How a site's update travels: its full model (Flower's default), its delta, or its rotated, padded delta.
ENCODINGS = ("weights", "delta", "rotated")


def num_params(arrays: Sequence[np.ndarray]) -> int:
    return int(sum(np.asarray(a).size for a in arrays))


def flatten(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """All arrays as one float64 vector, in order."""
    if not arrays:
        return np.zeros(0)
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(vec: np.ndarray, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`vec` cut into arrays shaped and typed like `like`."""
    out, at = [], 0
    for a in like:
        out.append(np.asarray(vec[at: at + a.size]).reshape(a.shape).astype(a.dtype))
        at += a.size
    return out


def subtract(new: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> list[np.ndarray]:
    """new - base, array by array, in the arrays' own dtype."""
    return [(np.asarray(n, dtype=np.float64) - np.asarray(b, dtype=np.float64)).astype(np.asarray(b).dtype)
            for n, b in zip(new, base, strict=True)]


def add(base: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> list[np.ndarray]:
    """base + delta, array by array, in base's dtype."""
    return [(np.asarray(b, dtype=np.float64) + np.asarray(d, dtype=np.float64)).astype(np.asarray(b).dtype)
            for b, d in zip(base, delta, strict=True)]


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    return float(math.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays)))


def clip_l2(arrays: Sequence[np.ndarray], bound: float) -> tuple[list[np.ndarray], float]:
    """(`arrays` scaled down to L2 norm `bound` if above it, their norm before)."""
    norm = l2_norm(arrays)
    if not math.isfinite(bound) or norm <= bound or norm == 0:
        return [np.asarray(a).copy() for a in arrays], norm
    scale = bound / norm
    return [(np.asarray(a, dtype=np.float64) * scale).astype(np.asarray(a).dtype) for a in arrays], norm


def padded_length(n: int) -> int:
    """The rotation's length: the next power of two >= n."""
    return 1 << max(0, (int(n) - 1).bit_length())


def coordinate_range(*, bound: float, length: int, factor: float) -> float:
    """SecAgg+'s per-coordinate clipping range for deltas of L2 norm <= `bound` sent as `length` numbers: `factor`
    times the root mean square of a flat vector of that norm. A sent vector clipped to it has L2 norm at most
    `factor * bound`."""
    return factor * bound / math.sqrt(length)


def _hadamard(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform of a power-of-two-long vector (its own inverse)."""
    n = x.shape[0]
    y = x.astype(np.float64, copy=True)
    h = 1
    while h < n:
        y = y.reshape(-1, 2, h)
        y = np.stack((y[:, 0, :] + y[:, 1, :], y[:, 0, :] - y[:, 1, :]), axis=1)
        h *= 2
    return y.reshape(n) / math.sqrt(n)


def _signs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n).astype(np.float64) * 2 - 1


def rotate(vec: np.ndarray, *, seed: int) -> np.ndarray:
    """`vec` zero-padded to a power of two, then rotated: H @ (signs * vec). Keeps the L2 norm."""
    n = padded_length(vec.shape[0])
    padded = np.zeros(n)
    padded[: vec.shape[0]] = vec
    return _hadamard(_signs(seed, n) * padded)


def unrotate(rotated: np.ndarray, *, seed: int, length: int) -> tuple[np.ndarray, float]:
    """(the first `length` coordinates of the inverse rotation, the L2 norm left in the padding).

    An honest update leaves nothing in the padding (up to SecAgg+'s quantisation); whatever is
    there was put by a site that did not follow the protocol, and is dropped.
    """
    n = rotated.shape[0]
    full = _signs(seed, n) * _hadamard(np.asarray(rotated, dtype=np.float64))
    return full[:length], float(np.linalg.norm(full[length:]))


def encode(new: Sequence[np.ndarray], start: Sequence[np.ndarray], *, encoding: str, seed: int) -> list[np.ndarray]:
    """What a site sends for trained weights `new` received as `start`: the weights, the delta, or the delta
    rotated (one float32 vector, padded to a power of two)."""
    if encoding == "weights":
        return [np.asarray(a) for a in new]
    delta = subtract(new, start)
    if encoding == "delta":
        return delta
    if encoding == "rotated":
        return [rotate(flatten(delta), seed=seed).astype(np.float32)]
    raise ValueError(f"unknown update encoding {encoding!r} (expected one of {', '.join(ENCODINGS)})")


def decode_delta(sent: Sequence[np.ndarray], like: Sequence[np.ndarray], *, encoding: str,
                 seed: int) -> tuple[list[np.ndarray], float]:
    """(the delta shaped like `like`, L2 norm dropped from the rotation's padding) from what `encode` produced,
    or from a sum of such; shapes must already have been checked (`shape_problems`)."""
    if encoding == "delta":
        return [np.asarray(a, dtype=np.float64) for a in sent], 0.0
    if encoding == "rotated":
        vec, padding = unrotate(np.asarray(sent[0]), seed=seed, length=num_params(like))
        return [a.astype(np.float64) for a in unflatten(vec, like)], padding
    raise ValueError(f"encoding {encoding!r} carries no delta")


def expected_shapes(like: Sequence[np.ndarray], *, encoding: str) -> list[tuple[int, ...]]:
    """The array shapes a site sends under `encoding` for a model shaped like `like`."""
    if encoding == "rotated":
        return [(padded_length(num_params(like)),)]
    return [tuple(np.asarray(a).shape) for a in like]


def shape_problems(sent: Sequence[np.ndarray], like: Sequence[np.ndarray], *, encoding: str) -> list[str]:
    """Why `sent` is not an update of the model shaped like `like` under `encoding` (count, shape, dtype)."""
    want = expected_shapes(like, encoding=encoding)
    if len(sent) != len(want):
        return [f"{len(sent)} arrays where {len(want)} were expected"]
    out = []
    for i, (a, shape) in enumerate(zip(sent, want, strict=True)):
        a = np.asarray(a)
        if tuple(a.shape) != shape:
            out.append(f"array {i} has shape {tuple(a.shape)}, expected {shape}")
        elif a.dtype.kind != "f":
            out.append(f"array {i} has dtype {a.dtype}, expected floating point")
    return out


def nonfinite(sent: Sequence[np.ndarray]) -> str | None:
    """A description of the NaN / infinite values in `sent`, or None when all are finite."""
    nan = sum(int(np.isnan(np.asarray(a, dtype=np.float64)).sum()) for a in sent)
    inf = sum(int(np.isinf(np.asarray(a, dtype=np.float64)).sum()) for a in sent)
    if not nan and not inf:
        return None
    return ", ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if part) + \
        f" value(s) of {num_params(sent)}"
