"""Run an experiment on Flower's simulation engine (Ray) with the deployment ClientApp and ServerApp."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from fedhaven.client.flower_app import make_client_app
from fedhaven.server.app import make_server_app
from fedhaven.server.federation import RunResult
from fedhaven.server.recorder import RoundRecord, SiteWitnesses
from fedhaven.shared.config import ConfigError
from fedhaven.shared.runtime import HARDENED_ENV
from fedhaven.shared.schema import ExperimentConfig
from fedhaven.sim.report import Summary, plot_rounds, summarize
from fedhaven.sim.sites import SimulatedSites

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
    return min(exp.sites, max(int(exp.sites * exp.strategy.fraction_fit), exp.min_sites))


def check_experiment(exp: ExperimentConfig) -> list[int]:
    """Everything that can be checked without running: data loads and splits, SecAgg+ fits. Returns site sizes."""
    from fedhaven.shared.data import load_data
    from fedhaven.shared.models import model_problems

    sizes = SimulatedSites(exp).sizes()
    problems = model_problems(cfg=exp.model, spec=load_data(cfg=exp.data, split="test").spec, dp=exp.dp.enabled)
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
    return sizes


def run_experiment(
    *, exp: ExperimentConfig, run_dir: Path, on_round: Callable[[RoundRecord], None] | None = None
) -> Summary:
    """Simulate `exp` end to end; write the run directory; return the summary."""
    from flwr.simulation import run_simulation

    started = time.perf_counter()
    sizes = check_experiment(exp)
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
    server_app = make_server_app(run=exp.run_config(), run_dir=run_dir, max_weight=max_weight, on_round=on_round,
                                 on_result=results.append, witnesses=SiteWitnesses(run_dir / "ledger-witnesses.json"),
                                 audit=lambda weights: audit_membership(exp=exp, weights=weights),
                                 ledger_command=f"fl-client ledger verify --state-dir {run_dir / 'sites'}/SITE")
    client_app = make_client_app(sites=sites, update_mods=attack_mods(exp, sites))
    cpus = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": exp.simulation.cpus_per_site, "num_gpus": exp.simulation.gpus_per_site},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": logging.ERROR,
                      "log_to_driver": True},
    }
    os.environ.update(HARDENED_ENV)  # Ray workers inherit the environment of this process
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=exp.sites,
                       backend_config=backend_config)
    except Exception as exc:  # noqa: BLE001 - re-raised with the run directory named
        # Flower may wrap the ServerApp's own error ("An error was encountered"); the privacy report says why.
        why = _failure_of(run_dir) or str(exc)
        raise SimulationFailed(f"{why} (partial results kept in {run_dir})") from exc
    finally:
        _shutdown_ray()
    if not results:
        raise SimulationFailed(f"the server finished without a result; see the log (partial results in {run_dir})")
    wall = time.perf_counter() - started
    result = results[0]
    plot_rounds(rounds=result.rounds, run_dir=run_dir, title=exp.name)
    return summarize(exp=exp, result=result, wall_time_s=wall)


def attack_mods(exp: ExperimentConfig, sites: SimulatedSites) -> list:
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


def audit_membership(*, exp: ExperimentConfig, weights: list) -> dict:
    """Loss-threshold membership inference on the final model: the sites' training data against the test set.

    Only a simulation can run it: it needs the sites' data, which a deployed coordinator never sees.
    """
    import torch

    from fedhaven.shared.audit import membership_inference
    from fedhaven.shared.data import ImageData, load_data
    from fedhaven.shared.models import build_model
    from fedhaven.shared.weights import set_weights

    sites = SimulatedSites(exp)
    test = load_data(cfg=exp.data, split="test")
    parts = [sites.site_data(i).aligned_to(test.classes) for i in range(exp.sites)]
    members = ImageData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]), test.classes)
    model = build_model(cfg=exp.model, spec=test.spec, dp=False)
    set_weights(model, weights)
    result = membership_inference(model=model, members=members, non_members=test, seed=exp.seed)
    return {"auc": result.auc, "members": result.members, "non_members": result.non_members,
            "attack": "loss threshold (Yeom et al. 2018)"}


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
