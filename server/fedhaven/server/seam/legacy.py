"""Flower's legacy server stack where fedhaven reaches past its public API: the SecAgg+ workflow's stages, the
central-DP wrappers' aggregation, the client manager's registry, the workflows' state records, strategies' state.

SecAgg+ exists only on Flower's legacy stack in 1.42 (`LegacyContext`, `DefaultWorkflow`,
`SecAggPlusWorkflow`); fedhaven drives it one fit round at a time, with retries, a guard
and checkpoints, which `DefaultWorkflow` cannot. What that takes from Flower's internals
is here, each listed in `fedhaven.server.seam.INTERNALS`; `fedhaven.server.flower_legacy`
builds on it with the public API only.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.criterion import Criterion
from flwr.server.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    Strategy,
)
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.default_workflows import default_fit_workflow, default_init_params_workflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import add_gaussian_noise_to_params, compute_stdv

from fedhaven.server.failures import SiteFailure, site_failure
from fedhaven.server.records import CentralNoise
from fedhaven.server.seam.secagg_relay import ProofRelay

__all__ = ["BoundedClientManager", "CheckedSecAggPlus", "ClientProxy", "TolerantAdaptiveClipping",
           "TolerantCentralDP", "TolerantFixedClipping", "fedadam_state", "fit_round_plain", "global_weights",
           "init_workflow_state", "node_id", "restore_vars", "set_fedadam_state", "set_global_weights", "set_round",
           "snapshot_vars", "start_client_manager"]

#: Flower's legacy FitIns config record: present only in messages that carry a training task.
FITINS_CONFIG = "fitins.config"
#: Flower's legacy FitRes metrics record: a training reply's metrics (kept beside SecAgg+'s masked vector).
FITRES_METRICS = "fitres.metrics"


def reply_metrics(reply: Message) -> dict[str, Any] | None:
    """The metrics a training reply carries (what the site reported in the clear), or None for other replies."""
    if not reply.has_content() or FITRES_METRICS not in reply.content.config_records:
        return None
    return dict(reply.content.config_records[FITRES_METRICS])


def node_id(proxy: ClientProxy) -> int:
    """The node a Flower client proxy stands for."""
    return int(getattr(proxy, "node_id", None) or proxy.cid)


# ----- the legacy context's state records, as Flower's workflows read and write them -----
def start_client_manager(grid: Grid, manager: SimpleClientManager) -> tuple[Any, Any]:
    """Flower's thread that registers the grid's nodes in `manager` (it wraps the manager's methods); returns
    (thread, stop event) once the first registration ran."""
    thread, stop, done = start_update_client_manager_thread(grid, manager)
    done.wait()
    return thread, stop


def init_workflow_state(grid: Grid, ctx: Context) -> None:
    """The initial global parameters and the start-time record, as `DefaultWorkflow` sets them up."""
    default_init_params_workflow(grid, ctx)
    ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.START_TIME: 0.0})


def set_round(ctx: Context, server_round: int) -> None:
    ctx.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = server_round


def global_params_record(ctx: Context) -> object:
    """The record object holding the global parameters: Flower replaces it only when a round aggregates."""
    return ctx.state.array_records[MAIN_PARAMS_RECORD]


def global_weights(ctx: Context) -> list[np.ndarray]:
    rec = ctx.state.array_records[MAIN_PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(rec, keep_input=True))


def set_global_weights(ctx: Context, weights: list[np.ndarray]) -> None:
    params = ndarrays_to_parameters(list(weights))
    ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, keep_input=True)


def fit_round_plain(grid: Any, ctx: Context) -> None:
    """One fit round without SecAgg+: Flower's default fit workflow."""
    default_fit_workflow(grid, ctx)


# ----- strategies' private state, for checkpoints and for a rejected round's rollback -----
def snapshot_vars(obj: Any) -> dict[str, Any]:
    """A deep copy of an object's attributes (a strategy's state before it aggregates)."""
    return copy.deepcopy(vars(obj))


def restore_vars(obj: Any, state: dict[str, Any]) -> None:
    obj.__dict__.update(state)


def fedadam_state(base: FedAdam) -> dict[str, list[np.ndarray] | None]:
    """FedAdam's moments (`m_t`, `v_t`): None before its first aggregate."""
    return {k: None if getattr(base, k) is None else [np.array(a) for a in getattr(base, k)] for k in ("m_t", "v_t")}


def set_fedadam_state(base: FedAdam, moments: dict[str, list[np.ndarray] | None],
                      weights: list[np.ndarray]) -> None:
    """Put FedAdam's moments back, with `weights` as its current point."""
    for k in ("m_t", "v_t"):
        setattr(base, k, moments.get(k))
    base.current_weights = [np.array(w) for w in weights]


class TolerantCentralDP:
    """Over Flower's client-side clipping wrappers: tolerate dropouts, noise with the norm the sites used.

    Flower's wrappers return no aggregate when any site failed. Here the noise is
    calibrated to the m updates actually averaged (std z*C/m), which keeps the
    guarantee while a site that refused (e.g. its budget is spent) is left out.
    Flower 1.42's adaptive wrapper also updates the clipping norm before adding
    noise, so a shrinking norm under-noised the round; here the noise uses the
    norm the sites were sent. The round is accounted at the configured noise
    multiplier, the mechanism's total (for adaptive clipping: update and count
    queries together), never at the update's larger share of it.
    """

    # set by the Flower wrapper this class is mixed into
    strategy: Strategy
    clipping_norm: float
    noise_multiplier: float
    num_sampled_clients: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What the accountant uses: the configured total. Flower's adaptive wrapper replaces
        # self.noise_multiplier by the larger multiplier of the update alone (Andrew et al. 2021).
        self.accounted_noise = float(kwargs["noise_multiplier"] if "noise_multiplier" in kwargs else args[1])
        self.applied: list[CentralNoise] = []

    def _after_aggregate(self, results: list[tuple[ClientProxy, FitRes]]) -> None:
        """Hook for wrappers that learn from the round (adaptive clipping)."""

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {}
        used, m = self.clipping_norm, len(results)
        self.num_sampled_clients = m
        params, metrics = self.strategy.aggregate_fit(server_round, results, [])
        self._after_aggregate(results)
        if params is not None:
            params = add_gaussian_noise_to_params(params, self.noise_multiplier, used, m)
            self.applied.append(CentralNoise(server_round, m, used, self.accounted_noise,
                                             compute_stdv(self.noise_multiplier, used, m),
                                             value_noise_multiplier=self.noise_multiplier,
                                             count_noise_std=float(getattr(self, "clipped_count_stddev", 0.0))))
        return params, metrics


class TolerantFixedClipping(TolerantCentralDP, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping, tolerating dropouts."""


class TolerantAdaptiveClipping(TolerantCentralDP, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, tolerating dropouts, noised with the norm the sites used."""

    def _after_aggregate(self, results: list[tuple[ClientProxy, FitRes]]) -> None:
        self._update_clip_norm(results)


class CheckedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow that remembers at which stage it halted and why.

    Flower's own `__call__` logs "Secure aggregation halted." and returns; the
    run would then carry on with the old model and finish as "completed". Its grid
    relays the sites' signed SecAgg+ keys to their neighbours (`secagg_relay`).
    """

    halted_stage: str | None = None
    setup_record: dict[str, Any] | None = None  # a re-mask round's group, sent to every member with setup
    failures: tuple[SiteFailure, ...] = ()
    collected: tuple[tuple[int, int, dict[str, Any]], ...] = ()  # (node, examples, metrics) of each trained reply

    def __call__(self, grid: Grid, context: Context) -> None:
        grid = ProofRelay(grid, setup_record=self.setup_record)  # the sites' signed keys, relayed to neighbours
        state = WorkflowState()
        self.halted_stage, self.failures, self.collected = None, (), ()
        stages = (("setup", self.setup_stage), ("share keys", self.share_keys_stage),
                  ("collect masked vectors", self.collect_masked_vectors_stage), ("unmask", self.unmask_stage))
        try:
            for name, stage in stages:
                if not stage(grid, context, state):  # type: ignore[arg-type]  # a LegacyContext, as in Flower's own
                    self.halted_stage = name
                    # Flower records some failures twice (once per loop over replies): keep each once.
                    self.failures = tuple(dict.fromkeys(site_failure(f) for f in state.failures))
                    return
        finally:
            # Sites that trained sent their metrics in the clear with their masked vectors: what they spent
            # counts even when unmasking fails later and the round yields no aggregate.
            self.collected = tuple((node_id(proxy), res.num_examples, dict(res.metrics))
                                   for proxy, res in state.legacy_results)


class _Among(Criterion):
    """Flower sampling criterion: only these client ids (and whatever `inner` also requires)."""

    def __init__(self, cids: set[str], inner: Criterion | None) -> None:
        self.cids, self.inner = cids, inner

    def select(self, client: ClientProxy) -> bool:
        return client.cid in self.cids and (self.inner is None or self.inner.select(client))


class BoundedClientManager(SimpleClientManager):
    """Flower's client manager whose wait for `min_sites` is bounded and says who is missing while it waits.

    Flower's own waits up to 86,400 s without a word. Here the wait lasts at most
    `timeout` seconds and, every `report_every` seconds, `report` is called with
    (seconds waited, sites needed, sites online).
    """

    def __init__(self, *, timeout: float, report: Callable[[float, int, int], None] | None = None,
                 report_every: float = 30.0, min_sites: int = 1, suspect_for: float = 120.0) -> None:
        super().__init__()
        self.timeout, self.report, self.report_every = timeout, report, report_every
        self.min_sites, self.suspect_for = min_sites, suspect_for
        self.shortfall: str | None = None  # why the last wait gave up
        self.suspects: dict[str, float] = {}  # cid -> when it last failed to answer in time
        self.excluded: set[str] = set()  # cids of sites located as bad: never sampled again in this run
        self.leave_out: Callable[[str], bool] | None = None  # also left out (a resumed run's located sites, by name)

    # ----- sites that went silent: not asked again at once -----
    def suspect(self, node_ids: Iterable[int]) -> None:
        """Nodes that did not answer within a stage's timeout. Until Flower drops them (its heartbeat takes about
        a minute) or `suspect_for` seconds pass, they are left out of sampling whenever enough others remain, so
        a dead site costs one retried attempt, not one per round."""
        now = time.monotonic()
        for n in node_ids:
            self.suspects[str(n)] = now

    def exclude(self, node_ids: Iterable[int]) -> None:
        """Sites located as bad: left out of every later round of the run."""
        self.excluded |= {str(n) for n in node_ids}

    def _left_out(self, cid: str) -> bool:
        return cid in self.excluded or (self.leave_out is not None and self.leave_out(cid))

    def _trusted(self) -> list[str]:
        now = time.monotonic()
        self.suspects = {c: t for c, t in self.suspects.items() if now - t < self.suspect_for and c in self.clients}
        return [c for c in self.clients if c not in self.suspects and not self._left_out(c)]

    def num_available(self) -> int:  # Flower's signature
        trusted = self._trusted()
        allowed = [c for c in self.clients if not self._left_out(c)]
        return len(trusted) if self.suspects and len(trusted) >= self.min_sites else len(allowed)

    def sample(self, num_clients: int, min_num_clients: int | None = None,  # Flower's signature
               criterion: Criterion | None = None) -> list[ClientProxy]:
        trusted = set(self._trusted())
        if self.suspects and len(trusted) >= max(self.min_sites, num_clients):
            criterion = _Among(trusted, criterion)
        elif any(self._left_out(c) for c in self.clients):
            criterion = _Among({c for c in self.clients if not self._left_out(c)}, criterion)
        return super().sample(num_clients, min_num_clients, criterion)

    def unregister(self, client: ClientProxy) -> None:  # a node Flower dropped comes back afresh
        self.suspects.pop(client.cid, None)
        super().unregister(client)

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:  # Flower's signature
        limit = min(float(timeout), self.timeout)
        start = time.monotonic()
        while True:
            left = limit - (time.monotonic() - start)
            wait = max(0.0, min(left, self.report_every))
            if super().wait_for(num_clients, timeout=wait):  # type: ignore[arg-type]  # Flower says int; seconds
                self.shortfall = None
                return True
            waited = time.monotonic() - start
            if waited >= limit:
                self.shortfall = (f"waited {waited:.0f} s for {num_clients} sites (min_sites), only "
                                  f"{self.num_available()} connected")
                return False
            if self.report is not None:
                self.report(waited, num_clients, self.num_available())
