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


@pytest.fixture
def rewrite_newest():
    """`rewrite_newest(ledger, noise=...)`: issue #22 finding 4 as an attacker with write access does it: the newest
    ledger entry's noise rewritten, its epsilon recomputed so that it follows, re-hashed (its signature kept: no one
    but the site can make a new one), and the anchor rewritten to match."""
    import json
    from dataclasses import asdict, replace

    from fedhaven.client.anchor import Anchor, write_anchor
    from fedhaven.client.ledger import Ledger, budget_history
    from fedhaven.shared.accounting import epsilon

    def rewrite(ledger: Ledger, *, noise: float) -> None:
        entries = ledger.entries()
        e = replace(entries[-1], noise_multiplier=noise)
        eps = epsilon(history=budget_history([*entries[:-1], e]), delta=e.delta)
        e = replace(e, epsilon_after=eps, cumulative_epsilon=eps)
        e = replace(e, hash=e.computed_hash())
        kept = ledger.path.read_text().splitlines(keepends=True)[:-1]
        line = json.dumps({k: v for k, v in asdict(e).items() if v is not None}, sort_keys=True)
        ledger.path.write_text("".join(kept) + line + "\n")
        write_anchor(ledger.anchor_path, Anchor(entries=len(entries), head=e.hash, site=e.site, ledger="x", time=0.0))

    return rewrite
