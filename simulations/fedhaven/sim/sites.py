"""Simulated sites: Flower's partition id picks a deterministic slice of one dataset, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhaven.client.types import Site, SiteInfo
from fedhaven.shared.data import ImageData, load_data, load_imagefolder
from fedhaven.shared.partition import partition_dirichlet, partition_iid, site_folders
from fedhaven.shared.schema import DataConfig, ExperimentConfig

PARTITION_ID = "partition-id"


@functools.lru_cache(maxsize=4)
def _train_data(cfg: DataConfig) -> ImageData:
    return load_data(cfg=cfg, split="train")


@functools.lru_cache(maxsize=4)
def _partitions(cfg: DataConfig, partition: str, sites: int, seed: int, alpha: float | None) -> tuple[np.ndarray, ...]:
    data = _train_data(cfg)
    if alpha is not None:
        return tuple(partition_dirichlet(labels=data.labels.numpy(), num_sites=sites, alpha=alpha, seed=seed))
    return tuple(partition_iid(num_examples=len(data), num_sites=sites, seed=seed))


def feature_cache_dir(exp: ExperimentConfig) -> Path:
    """Where simulated sites and the coordinator cache a fixed front end's features: `<output_dir>/.feature-cache`."""
    return Path(exp.output_dir) / ".feature-cache"


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

    def _index(self, node_config: dict) -> int:
        pid = int(node_config[PARTITION_ID])
        if not 0 <= pid < self.experiment.sites:
            raise ValueError(f"partition id {pid} outside 0..{self.experiment.sites - 1}")
        return pid

    def index(self, context) -> int:  # noqa: ANN001 - Flower Context
        """Which simulated site (0-based) a Flower context belongs to."""
        return self._index(context.node_config)

    def key(self, context) -> str:  # noqa: ANN001 - Flower Context
        exp = self.experiment
        ident = hash((exp.data, exp.partition, exp.sites, exp.seed, self.state_root))
        return f"sim:{ident}:{self._index(context.node_config)}"

    def info(self, context) -> SiteInfo:  # noqa: ANN001 - Flower Context
        return self.site_info(self._index(context.node_config))

    def data(self, context) -> ImageData:  # noqa: ANN001 - Flower Context
        return self.site_data(self._index(context.node_config))

    def sizes(self) -> list[int]:
        """Training examples per site."""
        exp = self.experiment
        if exp.partition == "folders":
            return [len(self.site_data(i)) for i in range(exp.sites)]
        return [len(p) for p in _partitions(exp.data, exp.partition, exp.sites, exp.seed, exp.partition_alpha())]

    def site_info(self, index: int) -> SiteInfo:
        exp = self.experiment
        name = site_name(index, exp.sites)
        if exp.partition == "folders":
            name = f"{name}-{site_folders(exp.data.path or '', num_sites=exp.sites)[index].name}"
        state_dir = Path(self.state_root) / name if self.state_root else None
        # Derived features (a fixed front end's output) are keyed by content, so runs and sites can share them.
        return SiteInfo(name=name, policy=exp.site_policy, state_dir=state_dir, device=exp.simulation.device,
                        cache_dir=feature_cache_dir(exp))

    def site_data(self, index: int) -> ImageData:
        exp = self.experiment
        if exp.partition == "folders":
            folder = site_folders(exp.data.path or "", num_sites=exp.sites)[index]
            return load_imagefolder(folder, image_size=exp.data.image_size or 32, channels=exp.data.channels or 3)
        parts = _partitions(exp.data, exp.partition, exp.sites, exp.seed, exp.partition_alpha())
        return _train_data(exp.data).subset(parts[index])

    def site(self, index: int) -> Site:
        return Site(info=self.site_info(index), data=self.site_data(index))
