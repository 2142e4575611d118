"""Run an experiment on Flower's simulation engine (Ray) with the deployment ClientApp and ServerApp."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhaven.client.flower_app import make_client_app
from fedhaven.server.app import make_server_app
from fedhaven.server.federation import RunResult
from fedhaven.server.records import RoundRecord
from fedhaven.server.witnesses import SiteWitnesses
from fedhaven.shared.config import ConfigError
from fedhaven.shared.data import ImageData
from fedhaven.shared.runtime import HARDENED_ENV
from fedhaven.shared.schema import ExperimentConfig
from fedhaven.sim.report import Summary, summarize
from fedhaven.sim.sites import SimulatedSites

if TYPE_CHECKING:
    import numpy as np

    from fedhaven.client.flower_app import Mod

log = logging.getLogger("fedhaven.sim")


class SimulationFailed(RuntimeError):
    """The simulation stopped before finishing; what it wrote so far stays in the run directory."""


def resolve_max_weight(exp: ExperimentConfig, sizes: list[int]) -> float:
    """SecAgg+'s max_weight: the largest site's example count under "auto", else checked against it."""
    largest = max(sizes)
    known = exp.known_max_weight()
    if known is None:
        return float(largest)
    if exp.central_dp.enabled:
        return known
    if known < largest:
        raise ConfigError([f"secagg.max_weight: {exp.secagg.max_weight:g} is below the largest site's "
                           f"{largest} examples; SecAgg+ would clip that site's update. Use \"auto\" or >= {largest}"],
                          source="experiment")
    return known


def sites_per_round(exp: ExperimentConfig) -> int:
    """How many sites Flower's strategies sample each round."""
    return exp.strategy.sites_per_round(sites=exp.sites, min_sites=exp.min_sites)


#: Ray's own processes on the head node (GCS, raylet, dashboard and runtime-env agents), in MB: see BENCHMARKS.md.
RAY_OVERHEAD_MB = 600


@dataclass(frozen=True)
class CheckedExperiment:
    """What `check_experiment` found: each site's number of training examples, and what the run needs of the
    machine (lines to print)."""

    sizes: list[int]
    needs: list[str]


def check_experiment(exp: ExperimentConfig) -> CheckedExperiment:
    """Everything that can be checked without running: data loads (decoded into the cache) and splits, the model
    takes the images, SecAgg+ fits, and the run's memory and disk fit this machine."""
    from fedhaven.shared.models import model_problems
    from fedhaven.shared.sources import load_data

    sizes = SimulatedSites(exp).sizes()
    test = load_data(cfg=exp.data, split="test", cache_dir=exp.cache_dir())
    problems = model_problems(cfg=exp.model, spec=test.spec, dp=exp.dp.enabled)
    needs: list[str] = []
    if not problems and min(sizes) >= 1:
        needs, more = resource_needs(exp, sizes, test)
        problems += more
    if exp.secagg.enabled:
        per_round = sites_per_round(exp)
        if per_round < exp.secagg.min_sites():
            problems.append(f"secagg: {per_round} sites per round is below the SecAgg+ reconstruction threshold "
                            f"{exp.secagg.min_sites()}; sample more sites or lower the threshold")
        try:
            resolve_max_weight(exp, sizes)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if min(sizes) < 1:
        problems.append("partition: a site received no examples; use fewer sites or a larger alpha")
    if problems:
        raise ConfigError(problems, source="experiment")
    return CheckedExperiment(sizes=sizes, needs=needs)


def resource_needs(exp: ExperimentConfig, sizes: list[int], test: ImageData) -> tuple[list[str], list[str]]:
    """(lines saying what the run needs of this machine, why it cannot have it): each worker's and the
    coordinator's memory limit against what they must hold, all of them together against the machine's available
    memory, and the front end's features against the cache's disk."""
    import statistics

    from fedhaven.shared.features import features_cached
    from fedhaven.shared.footprint import data_footprint, disk_problems, footprint, machine_problems
    from fedhaven.shared.recipe import expected_batch

    median = int(statistics.median(sizes))
    batch = expected_batch(site_size=median) if exp.train.batch_size == "auto" else int(exp.train.batch_size)
    site = footprint(model_cfg=exp.model, spec=test.spec, images=median, memory_mb=exp.simulation.memory_mb,
                     dp=exp.dp, expected_batch=batch)
    coord = data_footprint(model_cfg=exp.model, data=test, memory_mb=exp.memory_mb, dp=exp.dp,
                           round_sites=sites_per_round(exp), secagg=exp.secagg.enabled, simulated=True)
    needs = ["a site (median)  " + "\n                 ".join(site.describe()),
             "coordinator      " + "\n                 ".join(coord.describe())]
    problems = site.memory_problems(setting="simulation.memory_mb") + coord.memory_problems(setting="memory_mb")
    if not exp.simulation.ray_address:
        workers = min(exp.sites, max(1, int((os.cpu_count() or 1) / exp.simulation.cpus_per_site)))
        total = workers * exp.simulation.memory_mb + exp.memory_mb + RAY_OVERHEAD_MB
        needs.append(f"this machine     {workers} workers x {exp.simulation.memory_mb} MB + coordinator "
                     f"{exp.memory_mb} MB + Ray {RAY_OVERHEAD_MB} MB = {total} MB at most")
        problems += [f"{p}: lower simulation.memory_mb or run fewer workers at once (raise simulation.cpus_per_site)"
                     for p in machine_problems(need_mb=total, what="this simulation")]
    if site.feature_bytes:
        per_image = site.feature_bytes // max(1, site.images)
        sites = SimulatedSites(exp)
        todo = sum(n for i, n in enumerate(sizes)
                   if not features_cached(model_cfg=exp.model, data=sites.site_data(i), cache_dir=exp.cache_dir()))
        if not features_cached(model_cfg=exp.model, data=test, cache_dir=exp.cache_dir()):
            todo += len(test)
        problems += disk_problems(folder=exp.cache_dir(), need_bytes=todo * per_image,
                                  what="the front end's features of every site and of the test set")
    return needs, problems


def run_experiment(
    *, exp: ExperimentConfig, run_dir: Path, on_round: Callable[[RoundRecord], None] | None = None,
    verbose: bool = False,
) -> Summary:
    """Simulate `exp` end to end; write the run directory; return the summary. Ray's and its workers' own output
    (Flower's logs in the ClientApp actors) reach this terminal only when `verbose`."""
    from flwr.simulation import run_simulation

    started = time.perf_counter()
    sizes = check_experiment(exp).sizes
    max_weight = resolve_max_weight(exp, sizes) if exp.secagg.enabled else None
    run_dir.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    # Each simulated site keeps a privacy ledger, as a deployed site does; they are new sites, started explicitly
    # (a resumed run's sites go on with theirs).
    sites = SimulatedSites(exp, state_root=str(run_dir / "sites"))
    if not exp.resume_from:
        import json

        from fedhaven.shared.config import to_dict
        from fedhaven.sim.experiment import EXPERIMENT_FILE

        (run_dir / EXPERIMENT_FILE).write_text(json.dumps({k: v for k, v in to_dict(exp).items()
                                                           if k != "resume_from"}, indent=2))
        create_site_ledgers(sites)
        from fedhaven.sim.quality import write_site_reports

        write_site_reports(sites)  # each site's data-quality report, kept with the site (never sent)
    server_app = make_server_app(run=exp.run_config(), run_dir=run_dir, max_weight=max_weight, on_round=on_round,
                                 on_result=results.append, witnesses=SiteWitnesses(run_dir / "ledger-witnesses.json"),
                                 audit=lambda weights: audit_membership(exp=exp, weights=weights),
                                 ledger_command=f"fl-client ledger verify --state-dir {run_dir / 'sites'}/SITE",
                                 site_names=[sites.site_info(i).name for i in range(exp.sites)])  # waits name them
    client_app = make_client_app(sites=sites, update_mods=attack_mods(exp, sites))
    backend_config = {
        "client_resources": {"num_cpus": exp.simulation.cpus_per_site, "num_gpus": exp.simulation.gpus_per_site},
        "init_args": ray_init_args(exp, verbose=verbose),
    }
    os.environ.update(HARDENED_ENV)  # Ray workers inherit the environment of this process
    from fedhaven.sim.prepare import prepare_sites

    prepare_sites(exp)  # front ends before round 1: never inside a stage's timeout
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=exp.sites,
                       backend_config=backend_config)
    except Exception as exc:  # re-raised with the run directory named
        # Flower may wrap the ServerApp's own error ("An error was encountered"); the privacy report says why.
        why = _failure_of(run_dir) or str(exc)
        raise SimulationFailed(f"{why} (partial results kept in {run_dir})") from exc
    finally:
        _shutdown_ray()
    if not results:
        raise SimulationFailed(f"the server finished without a result; see the log (partial results in {run_dir})")
    wall = time.perf_counter() - started
    return summarize(exp=exp, result=results[0], wall_time_s=wall)


def ray_init_args(exp: ExperimentConfig, *, verbose: bool = False) -> dict[str, Any]:
    """How the simulation reaches Ray: a local instance on this machine's cores, or the existing cluster at
    `simulation.ray_address` (whose nodes run the same fedhaven installation). Quiet unless `verbose`: Ray's own
    start-up lines and its workers' output (Flower's DEBUG lines from SecAgg+, actor warnings) stay in Ray's session
    logs; the coordinator reports every site's failure itself, by name."""
    args: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.INFO if verbose else logging.ERROR,
                            "log_to_driver": verbose}
    if exp.simulation.ray_address:
        args["address"] = exp.simulation.ray_address
    else:
        args["num_cpus"] = os.cpu_count() or 1
    return args


def attack_mods(exp: ExperimentConfig, sites: SimulatedSites) -> list[Mod]:
    """The simulated attackers' ClientApp mod (`[attack]`), or none."""
    if not exp.attack.enabled:
        return []
    from fedhaven.sim.attack import AttackMod

    return [AttackMod(attack=exp.attack, sites=sites)]


def _failure_of(run_dir: Path) -> str | None:
    """Why the run failed, as the coordinator wrote it in the privacy report (written in every outcome)."""
    import json

    try:
        report = json.loads((run_dir / "privacy.json").read_text())
    except (OSError, ValueError):
        return None
    return report.get("stopped") if report.get("outcome") == "failed" else None


def create_site_ledgers(sites: SimulatedSites) -> None:
    """Start every simulated site's privacy ledger (with its anchor), as `fl-client ledger init` does for a new site."""
    exp = sites.experiment
    for i in range(exp.sites):
        info = sites.site_info(i)
        ledger = info.ledger()
        if ledger is not None:
            ledger.init(site=info.name, reason=f"simulated site of experiment {exp.name}")


def audit_membership(*, exp: ExperimentConfig, weights: list[np.ndarray]) -> dict[str, Any]:
    """Loss-threshold membership inference on the final model: the sites' training data against the test set.

    Only a simulation can run it: it needs the sites' data, which a deployed coordinator never sees. A model
    with a fixed front end is attacked on the features the sites and the coordinator cached; samples are read a
    batch at a time.
    """
    from fedhaven.shared.audit import membership_inference
    from fedhaven.shared.data import FeatureData
    from fedhaven.shared.features import front_features
    from fedhaven.shared.memory import MemoryBudget, eval_example_bytes
    from fedhaven.shared.models import build_model, split_front
    from fedhaven.shared.sources import load_data
    from fedhaven.shared.weights import set_weights

    sites = SimulatedSites(exp)
    test = load_data(cfg=exp.data, split="test", cache_dir=exp.cache_dir())
    parts = [sites.site_data(i).aligned_to(test.classes) for i in range(exp.sites)]
    model = build_model(cfg=exp.model, spec=test.spec, dp=False)
    set_weights(model, weights)
    front, head = split_front(model)
    members: Sequence[ImageData | FeatureData] = parts
    non_members: ImageData | FeatureData = test
    if front is not None:
        def feats(data: ImageData) -> FeatureData:
            out = front_features(model=model, data=data, cache_dir=exp.cache_dir(), memory_mb=exp.memory_mb)
            assert out is not None
            return out

        members = [feats(p) for p in parts]
        non_members = feats(test)
    # images without a front end, its features with one
    row = (non_members.images.row_shape if isinstance(non_members, ImageData)
           else non_members.features.row_shape)
    batch = MemoryBudget(exp.memory_mb).rows(per_row_bytes=eval_example_bytes(head, row_shape=row), cap=2048)
    result = membership_inference(model=head, members=members, non_members=non_members, seed=exp.seed,
                                  batch_size=batch)
    return {"auc": result.auc, "members": result.members, "non_members": result.non_members,
            "attack": "loss threshold (Yeom et al. 2018)"}


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
