"""Shared fixtures: hardened environment, small synthetic data, a tiny digits experiment."""

from __future__ import annotations

import os

import pytest
import torch

from fedhaven.shared.runtime import HARDENED_ENV, harden_environment

harden_environment()
torch.set_num_threads(1)


@pytest.fixture
def synthetic_images():
    """A learnable 1x8x8, 3-class problem: the class sets the brightness of one quadrant."""
    from fedhaven.shared.data import ImageData

    g = torch.Generator().manual_seed(0)
    n = 240
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    for c in range(3):
        r, q = divmod(c, 2)
        images[labels == c, :, 4 * r: 4 * r + 4, 4 * q: 4 * q + 4] += 180
    return ImageData(images, labels.long(), ("a", "b", "c"))


@pytest.fixture(autouse=True)
def _hardened_env():
    for k, v in HARDENED_ENV.items():
        assert os.environ.get(k) == v
    yield
