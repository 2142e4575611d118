"""Every simulated site's front-end features (and the coordinator's) made ready before round 1, side by side.

A site computes its fixed front end's output once; done inside round 1 it would run
within a SecAgg+ stage and its timeout (`waits.stage`), and a large site's front end
takes minutes. `fl-sim` therefore prepares them first, one process per core (each
under `simulation.memory_mb`), into the shared cache where the sites then find them,
as a deployed site's `fl-client start` does before it joins.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from fedhaven.shared.schema import ExperimentConfig

log = logging.getLogger("fedhaven.sim")

#: The coordinator's test set, as a job beside the sites' indices.
TEST_SET = -1


def _prepare(exp: ExperimentConfig, index: int) -> tuple[int, int, float]:
    """(index, images, seconds) after computing (or finding) one site's, or the test set's, features."""
    import torch

    from fedhaven.shared.features import prepare_front_ends
    from fedhaven.shared.runtime import harden_environment, resolve_device
    from fedhaven.shared.sources import load_data
    from fedhaven.sim.sites import SimulatedSites

    harden_environment()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if index == TEST_SET:
        data, memory = load_data(cfg=exp.data, split="test", cache_dir=exp.cache_dir()), exp.memory_mb
    else:
        data, memory = SimulatedSites(exp).site_data(index), exp.simulation.memory_mb
    prepare_front_ends(models=[exp.model], data=data, cache_dir=exp.cache_dir(), memory_mb=memory,
                       device=resolve_device(exp.simulation.device))
    return index, len(data), time.perf_counter() - started


def prepare_sites(exp: ExperimentConfig, *, workers: int | None = None) -> float:
    """Compute every site's and the test set's front-end features not yet in the cache; returns the seconds taken
    (0 when the model has no front end or everything was cached)."""
    from fedhaven.shared.features import features_cached
    from fedhaven.shared.models import build_model, split_front
    from fedhaven.shared.sources import load_data
    from fedhaven.sim.sites import SimulatedSites

    test = load_data(cfg=exp.data, split="test", cache_dir=exp.cache_dir())
    if split_front(build_model(cfg=exp.model, spec=test.spec, dp=False))[0] is None:
        return 0.0
    sites = SimulatedSites(exp)
    jobs = [i for i in range(exp.sites)
            if not features_cached(model_cfg=exp.model, data=sites.site_data(i), cache_dir=exp.cache_dir())]
    if not features_cached(model_cfg=exp.model, data=test, cache_dir=exp.cache_dir()):
        jobs.append(TEST_SET)
    if not jobs:
        return 0.0
    started = time.perf_counter()
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    log.info("preparing the front end of %d site(s)%s before round 1, %d at a time", len(jobs) - (TEST_SET in jobs),
             " and the test set" if TEST_SET in jobs else "", workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_prepare, exp, i) for i in jobs]
        for done, fut in enumerate(as_completed(futures), start=1):
            index, images, seconds = fut.result()
            name = "test set" if index == TEST_SET else sites.site_info(index).name
            log.info("  %s: %d images in %.0f s (%d of %d)", name, images, seconds, done, len(jobs))
    return time.perf_counter() - started
