"""Simulated sites: Flower's partition id picks a deterministic slice of one dataset, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedhaven.client.types import Site, SiteInfo
from fedhaven.shared.data import ImageData
from fedhaven.shared.partition import partition_dirichlet, partition_iid, site_folders
from fedhaven.shared.schema import DataConfig, ExperimentConfig
from fedhaven.shared.sources import load_data, load_imagefolder

if TYPE_CHECKING:
    from flwr.app import Context, UserConfig

PARTITION_ID = "partition-id"


@functools.lru_cache(maxsize=4)
def _train_data(cfg: DataConfig, cache_dir: Path) -> ImageData:
    """The whole training set: labels in memory, images decoded once into `cache_dir` and read as needed."""
    return load_data(cfg=cfg, split="train", cache_dir=cache_dir)


@functools.lru_cache(maxsize=4)
def _partitions(cfg: DataConfig, cache_dir: Path, partition: str, sites: int, seed: int,
                alpha: float | None) -> tuple[np.ndarray, ...]:
    data = _train_data(cfg, cache_dir)
    if alpha is not None:
        return tuple(partition_dirichlet(labels=data.labels.numpy(), num_sites=sites, alpha=alpha, seed=seed))
    return tuple(partition_iid(num_examples=len(data), num_sites=sites, seed=seed))


def site_name(index: int, sites: int) -> str:
    """`site-07` style names, zero-padded to the number of sites."""
    return f"site-{index:0{max(2, len(str(sites - 1)))}d}"


@dataclass(frozen=True)
class SimulatedSites:
    """The SiteProvider of `fl-sim`: site i holds partition i of the experiment's training data.

    With `state_root`, each site keeps a privacy ledger in `state_root/<site>/`, as a deployed site does.
    """

    experiment: ExperimentConfig
    state_root: str | None = None

    def _index(self, node_config: UserConfig) -> int:
        pid = int(node_config[PARTITION_ID])
        if not 0 <= pid < self.experiment.sites:
            raise ValueError(f"partition id {pid} outside 0..{self.experiment.sites - 1}")
        return pid

    def index(self, context: Context) -> int:
        """Which simulated site (0-based) a Flower context belongs to."""
        return self._index(context.node_config)

    def key(self, context: Context) -> str:
        exp = self.experiment
        ident = hash((exp.data, exp.partition, exp.sites, exp.seed, self.state_root))
        return f"sim:{ident}:{self._index(context.node_config)}"

    def info(self, context: Context) -> SiteInfo:
        return self.site_info(self._index(context.node_config))

    def data(self, context: Context) -> ImageData:
        return self.site_data(self._index(context.node_config))

    def sizes(self) -> list[int]:
        """Training examples per site."""
        exp = self.experiment
        if exp.partition == "folders":
            return [len(self.site_data(i)) for i in range(exp.sites)]
        return [len(p) for p in self._parts()]

    def _parts(self) -> tuple[np.ndarray, ...]:
        exp = self.experiment
        return _partitions(exp.data, exp.cache_dir(), exp.partition, exp.sites, exp.seed, exp.partition_alpha())

    def site_info(self, index: int) -> SiteInfo:
        exp = self.experiment
        name = site_name(index, exp.sites)
        if exp.partition == "folders":
            name = f"{name}-{site_folders(exp.data.path or '', num_sites=exp.sites)[index].name}"
        state_dir = Path(self.state_root) / name if self.state_root else None
        # Derived features (a fixed front end's output) are keyed by content, so runs and sites can share them.
        return SiteInfo(name=name, policy=exp.site_policy, state_dir=state_dir, device=exp.simulation.device,
                        cache_dir=exp.cache_dir(), memory_mb=exp.simulation.memory_mb)

    def site_data(self, index: int) -> ImageData:
        exp = self.experiment
        if exp.partition == "folders":
            folder = site_folders(exp.data.path or "", num_sites=exp.sites)[index]
            return load_imagefolder(folder, image_size=exp.data.image_size or 32, channels=exp.data.channels or 3,
                                    cache_dir=exp.cache_dir())
        return _train_data(exp.data, exp.cache_dir()).subset(self._parts()[index])

    def site(self, index: int) -> Site:
        return Site(info=self.site_info(index), data=self.site_data(index))
