"""Flower's legacy server stack (LegacyContext, strategies, SecAgg+ workflow) behind one module.

SecAgg+ exists only on Flower's legacy stack in 1.42, so the coordinator runs
there. Everything Flower-typed on the server side lives here; the rest of
fedhaven.server sees numpy arrays, typed configs and plain callbacks.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext
from flwr.server import ServerConfig as FlowerServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.supercore.differential_privacy import add_gaussian_noise_to_params, compute_stdv
from flwr.server.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping, DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg, FedProx,
    Strategy,
)
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow, default_init_params_workflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp.grid import Grid

from fedhaven.server.recorder import CentralNoise
from fedhaven.shared.schema import RunConfig, SecAggConfig

log = logging.getLogger("fedhaven.server")


@dataclass
class FitRoundLog:
    """What the strategy saw in one fit round: each site's metrics and every failure reason."""

    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (num_examples, metrics)
    failures: list[str] = field(default_factory=list)


class RecordingStrategy(Strategy):
    """Delegates to a Flower strategy and keeps what each fit round returned."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.last = FitRoundLog()

    def initialize_parameters(self, client_manager):  # noqa: ANN001, ANN201 - Flower signature
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict]:
        self.last.results = [(r.num_examples, dict(r.metrics)) for _, r in results]
        self.last.failures.extend(_reason(f) for f in failures)
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):  # noqa: ANN001, ANN201
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):  # noqa: ANN001, ANN201
        return self.inner.evaluate(server_round, parameters)


def _reason(failure: Any) -> str:
    """One readable line for a site's failure (Flower wraps the site's exception in Ray tracebacks)."""
    if isinstance(failure, tuple):
        return f"site returned status {failure[1].status.code.name}: {failure[1].status.message}"
    return short_reason(str(failure))


def short_reason(text: str, *, limit: int = 400) -> str:
    """The innermost error message of a Flower/Ray error text, without the tracebacks."""
    marker = "occurred. Message:"
    lines = [ln.strip() for ln in text.replace("\\n", "\n").rsplit(marker, 1)[-1].splitlines() if ln.strip()]
    if marker not in text:
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Refused): ", ln)]
        lines = errors[-1:] or lines
    out = (lines[0] if lines else text).strip(" '\">)")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _fit_metrics(results: list[tuple[int, dict]]) -> dict:
    n = sum(k for k, _ in results) or 1
    out: dict[str, float] = {}
    for key in ("loss", "accuracy"):
        vals = [(k, m[key]) for k, m in results if isinstance(m.get(key), (int, float))]
        if vals:
            out[f"train_{key}"] = sum(k * v for k, v in vals) / n
    return out


class _TolerantCentralDP:
    """Over Flower's client-side clipping wrappers: tolerate dropouts, noise with the norm the sites used.

    Flower's wrappers return no aggregate when any site failed. Here the noise is
    calibrated to the m updates actually averaged (std z*C/m), which keeps the
    guarantee while a site that refused (e.g. its budget is spent) is left out.
    Flower 1.42's adaptive wrapper also updates the clipping norm before adding
    noise, so a shrinking norm under-noised the round; here the noise uses the
    norm the sites were sent.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[CentralNoise] = []

    def _after_aggregate(self, results: list) -> None:
        """Hook for wrappers that learn from the round (adaptive clipping)."""

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201 - Flower signature
        if not results:
            return None, {}
        used, m = self.clipping_norm, len(results)
        self.num_sampled_clients = m
        params, metrics = self.strategy.aggregate_fit(server_round, results, [])
        self._after_aggregate(results)
        if params is not None:
            params = add_gaussian_noise_to_params(params, self.noise_multiplier, used, m)
            self.applied.append(CentralNoise(server_round, m, used, self.noise_multiplier,
                                             compute_stdv(self.noise_multiplier, used, m)))
        return params, metrics


class TolerantFixedClipping(_TolerantCentralDP, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping, tolerating dropouts."""


class TolerantAdaptiveClipping(_TolerantCentralDP, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, tolerating dropouts, noised with the norm the sites used."""

    def _after_aggregate(self, results: list) -> None:
        self._update_clip_norm(results)


def step_fraction(*, schedule: str, server_round: int, rounds: int, floor: float) -> float:
    """The fraction of round `server_round`'s aggregated update the global model takes (1 = plain aggregation)."""
    if schedule == "constant" or rounds <= 1:
        return 1.0
    progress = (min(server_round, rounds) - 1) / (rounds - 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class ScheduledStep(Strategy):
    """Moves the global model by a scheduled fraction of the aggregate's change: new = sent + f(round) (agg - sent).

    Post-processing of the (noised, securely aggregated) result, so it costs no
    privacy. The starting point is the model sent in that round, which is also
    what a resumed run sends, so the schedule needs no state of its own.
    """

    def __init__(self, inner: Strategy, *, schedule: str, rounds: int, floor: float) -> None:
        self.inner, self.schedule, self.rounds, self.floor = inner, schedule, rounds, floor
        self._sent: dict[int, list[np.ndarray]] = {}

    def __getattr__(self, name: str) -> Any:  # e.g. the central-DP wrapper's record of its noise
        return getattr(self.__dict__["inner"], name)

    def initialize_parameters(self, client_manager):  # noqa: ANN001, ANN201 - Flower signature
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        self._sent = {server_round: parameters_to_ndarrays(parameters)}
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        sent = self._sent.get(server_round)
        if params is None or sent is None:
            return params, metrics
        f = step_fraction(schedule=self.schedule, server_round=server_round, rounds=self.rounds, floor=self.floor)
        agg = parameters_to_ndarrays(params)
        stepped = [s + f * (a - s) if np.issubdtype(a.dtype, np.floating) else a
                   for s, a in zip(sent, agg, strict=True)]
        return ndarrays_to_parameters(stepped), metrics

    def configure_evaluate(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):  # noqa: ANN001, ANN201
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):  # noqa: ANN001, ANN201
        return self.inner.evaluate(server_round, parameters)


def central_noise(strategy: RecordingStrategy) -> list[CentralNoise]:
    """Every round's central-DP noise so far (empty when central DP is off)."""
    return list(getattr(strategy.inner, "applied", []))


def build_strategy(*, run: RunConfig, initial: Sequence[np.ndarray],
                   fit_config: Callable[[int], dict[str, Any]]) -> RecordingStrategy:
    """FedAvg, FedProx or FedAdam as configured, with fedhaven's task config sent every round."""
    common: dict[str, Any] = dict(
        fraction_fit=run.strategy.fraction_fit, fraction_evaluate=0.0, min_fit_clients=run.min_sites,
        min_evaluate_clients=0, min_available_clients=run.min_sites, on_fit_config_fn=fit_config,
        accept_failures=True, initial_parameters=ndarrays_to_parameters(list(initial)),
        fit_metrics_aggregation_fn=_fit_metrics,
    )
    s = run.strategy
    if s.name == "fedprox":
        inner: Strategy = FedProx(proximal_mu=s.proximal_mu, **common)
    elif s.name == "fedadam":
        inner = FedAdam(eta=s.server_lr, eta_l=run.train.lr, beta_1=s.beta_1, beta_2=s.beta_2, tau=s.tau, **common)
    else:
        inner = FedAvg(**common)
    c = run.central_dp
    if c.enabled:
        if c.clipping == "fixed":
            inner = TolerantFixedClipping(inner, noise_multiplier=c.noise_multiplier, clipping_norm=c.clipping_norm,
                                          num_sampled_clients=run.min_sites)
        else:
            inner = TolerantAdaptiveClipping(inner, noise_multiplier=c.noise_multiplier,
                                             num_sampled_clients=run.min_sites, initial_clipping_norm=c.clipping_norm,
                                             target_clipped_quantile=c.target_clipped_quantile,
                                             clip_norm_lr=c.clip_norm_lr,
                                             clipped_count_stddev=None if c.clipped_count_stddev == "auto"
                                             else c.clipped_count_stddev)
    if s.step_schedule != "constant":
        inner = ScheduledStep(inner, schedule=s.step_schedule, rounds=run.rounds, floor=s.step_floor)
    return RecordingStrategy(inner)


@dataclass(frozen=True)
class FitOutcome:
    """A fit round's outcome: new global weights, or None with the reason no aggregate came out."""

    weights: list[np.ndarray] | None
    log: FitRoundLog
    halted_stage: str | None = None


class CheckedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow that remembers at which stage it halted and why.

    Flower's own `__call__` logs "Secure aggregation halted." and returns; the
    run would then carry on with the old model and finish as "completed".
    """

    halted_stage: str | None = None
    failures: tuple[str, ...] = ()

    def __call__(self, grid: Grid, context: Context) -> None:
        state = WorkflowState()
        self.halted_stage, self.failures = None, ()
        stages = (("setup", self.setup_stage), ("share keys", self.share_keys_stage),
                  ("collect masked vectors", self.collect_masked_vectors_stage), ("unmask", self.unmask_stage))
        for name, stage in stages:
            if not stage(grid, context, state):  # type: ignore[arg-type]
                self.halted_stage = name
                # Flower records some failures twice (once per loop over replies): keep each once.
                self.failures = tuple(dict.fromkeys(short_reason(str(f)) for f in state.failures))
                return


def secagg_workflow(cfg: SecAggConfig, *, max_weight: float) -> CheckedSecAggPlus:
    return CheckedSecAggPlus(num_shares=cfg.num_shares, reconstruction_threshold=cfg.reconstruction_threshold,
                             max_weight=max_weight, clipping_range=cfg.clipping_range,
                             quantization_range=cfg.quantization_range, modulus_range=cfg.modulus_range,
                             timeout=cfg.timeout)


class LegacyFederation:
    """Drives Flower's legacy stack one fit round at a time for fedhaven's round loop."""

    def __init__(self, *, grid: Grid, context: Context, run: RunConfig, strategy: RecordingStrategy,
                 max_weight: float | None) -> None:
        self.grid = grid
        self.ctx = LegacyContext(context=context, config=FlowerServerConfig(num_rounds=run.rounds),
                                 strategy=strategy, client_manager=SimpleClientManager())
        self.strategy = strategy
        self.secagg = secagg_workflow(run.secagg, max_weight=max_weight) if max_weight is not None else None
        self._thread, self._stop, done = start_update_client_manager_thread(grid, self.ctx.client_manager)
        done.wait()
        default_init_params_workflow(grid, self.ctx)
        self.ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.START_TIME: 0.0})

    def weights(self) -> list[np.ndarray]:
        rec = self.ctx.state.array_records[MAIN_PARAMS_RECORD]
        return parameters_to_ndarrays(compat.arrayrecord_to_parameters(rec, keep_input=True))

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Restore global weights (e.g. from a checkpoint) as the next round's starting point."""
        params = ndarrays_to_parameters(list(weights))
        self.ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, keep_input=True)

    def available_sites(self) -> int:
        return self.ctx.client_manager.num_available()

    def fit_round(self, server_round: int) -> FitOutcome:
        """One fit round (SecAgg+ or plain); weights None when no aggregate was produced."""
        self.ctx.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = server_round
        self.strategy.last = FitRoundLog()
        before = self.ctx.state.array_records[MAIN_PARAMS_RECORD]
        halted = None
        if self.secagg is not None:
            self.secagg(self.grid, self.ctx)
            halted = self.secagg.halted_stage
            self.strategy.last.failures.extend(self.secagg.failures)
        else:
            default_fit_workflow(self.grid, self.ctx)
        after = self.ctx.state.array_records[MAIN_PARAMS_RECORD]
        if after is before:
            return FitOutcome(weights=None, log=self.strategy.last, halted_stage=halted or "aggregate")
        return FitOutcome(weights=self.weights(), log=self.strategy.last)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
