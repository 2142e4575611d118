"""Simulated sites: Flower's partition id picks a deterministic slice of one dataset, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedhaven.client.site import Site
from fedhaven.shared.data import ImageData, load_data, load_imagefolder
from fedhaven.shared.partition import partition_dirichlet, partition_iid, site_folders
from fedhaven.shared.runtime import resolve_device
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


def site_name(index: int, sites: int) -> str:
    """`site-07` style names, zero-padded to the number of sites."""
    return f"site-{index:0{max(2, len(str(sites - 1)))}d}"


@dataclass(frozen=True)
class SimulatedSites:
    """The SiteProvider of `fl-sim`: site i holds partition i of the experiment's training data."""

    experiment: ExperimentConfig

    def _index(self, node_config: dict) -> int:
        pid = int(node_config[PARTITION_ID])
        if not 0 <= pid < self.experiment.sites:
            raise ValueError(f"partition id {pid} outside 0..{self.experiment.sites - 1}")
        return pid

    def key(self, context) -> str:  # noqa: ANN001 - Flower Context
        exp = self.experiment
        return f"sim:{hash((exp.data, exp.partition, exp.sites, exp.seed))}:{self._index(context.node_config)}"

    def load(self, context) -> Site:  # noqa: ANN001 - Flower Context
        return self.site(self._index(context.node_config))

    def sizes(self) -> list[int]:
        """Training examples per site, without loading any site's images twice."""
        exp = self.experiment
        if exp.partition == "folders":
            return [len(self.site(i).data) for i in range(exp.sites)]
        return [len(p) for p in _partitions(exp.data, exp.partition, exp.sites, exp.seed, exp.partition_alpha())]

    def site(self, index: int) -> Site:
        exp = self.experiment
        device = resolve_device(exp.simulation.device)
        name = site_name(index, exp.sites)
        if exp.partition == "folders":
            folder = site_folders(exp.data.path or "", num_sites=exp.sites)[index]
            data = load_imagefolder(folder, image_size=exp.data.image_size or 32, channels=exp.data.channels or 3)
            return Site(name=f"{name}-{folder.name}", data=data, device=device)
        parts = _partitions(exp.data, exp.partition, exp.sites, exp.seed, exp.partition_alpha())
        return Site(name=name, data=_train_data(exp.data).subset(parts[index]), device=device)
