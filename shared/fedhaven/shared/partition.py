"""Deterministic splits of one dataset across simulated sites: IID, Dirichlet label skew, one folder per site."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedhaven.shared.data import DataError


def partition_iid(*, num_examples: int, num_sites: int, seed: int) -> list[np.ndarray]:
    """Shuffle once and deal examples round-robin: site sizes differ by at most one."""
    if num_sites > num_examples:
        raise DataError(f"cannot split {num_examples} examples across {num_sites} sites")
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(order[i::num_sites]) for i in range(num_sites)]


def partition_dirichlet(
    *, labels: np.ndarray, num_sites: int, alpha: float, seed: int, min_size: int = 10, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: each class is split across sites in proportions drawn from Dirichlet(alpha).

    Smaller `alpha` means more skew. Draws are repeated (deterministically) until
    every site holds at least `min_size` examples.
    """
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    if num_sites * min_size > len(labels):
        raise DataError(f"cannot give {num_sites} sites at least {min_size} examples each from {len(labels)}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        sites: list[list[int]] = [[] for _ in range(num_sites)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_sites, alpha))) * len(idx)).astype(int)[:-1]
            for site, part in zip(sites, np.split(idx, cuts), strict=True):
                site.extend(part.tolist())
        if min(len(s) for s in sites) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in sites]
    raise DataError(f"dirichlet:{alpha} left a site with fewer than {min_size} examples in {max_tries} draws; "
                    f"raise alpha or use fewer sites")


def site_folders(root: str | Path, *, num_sites: int) -> list[Path]:
    """The per-site sub-folders of `root` (sorted by name), each an ImageFolder tree of its own."""
    base = Path(root)
    folders = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if len(folders) < num_sites:
        raise DataError(f"{base}: found {len(folders)} site folders, need {num_sites} "
                        f"(partition 'folders' expects {base}/<site>/<class>/<image>)")
    return folders[:num_sites]
