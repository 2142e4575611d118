"""Flower's legacy server stack (LegacyContext, strategies, SecAgg+ workflow) behind one module.

SecAgg+ exists only on Flower's legacy stack in 1.42, so the coordinator runs
there. Everything Flower-typed on the server side lives here, on Flower's public
API and the coordinator's seam (`fedhaven.server.seam.legacy`, which holds what
reaches past that API); the rest of fedhaven.server sees numpy arrays, typed
configs and plain callbacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager, LegacyContext
from flwr.server import ServerConfig as FlowerServerConfig
from flwr.server.strategy import Bulyan, FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, Strategy
from flwr.serverapp import Grid

from fedhaven.server.attendance import Attendance
from fedhaven.server.failures import SiteFailure, site_failure
from fedhaven.server.guard import UpdateGuard
from fedhaven.server.identity import Registered
from fedhaven.server.latency.grid import PollingGrid
from fedhaven.server.locate.exclusions import Exclusions
from fedhaven.server.records import CentralNoise
from fedhaven.server.seam.legacy import (
    FITINS_CONFIG,
    BoundedClientManager,
    CheckedSecAggPlus,
    ClientProxy,
    TolerantAdaptiveClipping,
    TolerantCentralDP,
    TolerantFixedClipping,
    fedadam_state,
    fit_round_plain,
    global_params_record,
    global_weights,
    init_workflow_state,
    node_id,
    reply_metrics,
    restore_vars,
    set_fedadam_state,
    set_global_weights,
    set_round,
    snapshot_vars,
    start_client_manager,
)
from fedhaven.server.witnesses import SiteWitnesses
from fedhaven.shared.refusal import code_of
from fedhaven.shared.schema import RunConfig, SecAggConfig
from fedhaven.shared.witness import Witness

log = logging.getLogger("fedhaven.server")


@dataclass
class FitRoundLog:
    """What one fit attempt returned: each site's metrics (with its node), every failure reason, and the
    nodes asked to train whose reply never came (they may have trained: their spending is only bounded)."""

    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (num_examples, metrics)
    failures: list[SiteFailure] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)  # the node of each result, when known
    unanswered: list[str] = field(default_factory=list)  # site names (or "node N") of attendance.unanswered
    attendance: Attendance = field(default_factory=Attendance)
    located: list[str] = field(default_factory=list)  # sites the search over re-masked groups found (excluded)
    locate_groups: int = 0  # re-masked groups unmasked in the round
    locate_time_s: float = 0.0
    locate_note: str | None = None  # how the search ended (or why no site could be located)

    @property
    def asked(self) -> int:
        """Distinct sites contacted in the attempt (0: not known)."""
        return len(self.attendance.contacted)


class _Wrapper(Strategy):
    """A Flower strategy around another (`inner`): everything is passed on unless a subclass overrides it."""

    inner: Strategy

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
                           ) -> tuple[float | None, dict[str, Scalar]]:
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)


class RecordingStrategy(_Wrapper):
    """Delegates to a Flower strategy, keeps what each fit round returned, and sends each site its witness.

    The witness (the last update received from the site's node: its ledger seq and the hash it
    linked to) is added to that node's own copy of the task config; the site refuses when its
    ledger does not contain it.
    """

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.last = FitRoundLog()
        self.witnesses: SiteWitnesses | None = None
        self.sent: dict[int, FitIns] = {}  # the round's task per node (a re-masked group is sent the same)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self._configure_fit(server_round, parameters, client_manager)
        self.sent = {node_id(p): ins for p, ins in instructions}
        return instructions

    def _configure_fit(self, server_round: int, parameters: Parameters,
                       client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        if self.witnesses is None:
            return instructions
        out = []
        for proxy, ins in instructions:
            witness = self.witnesses.for_node(node_id(proxy))
            if witness is not None:  # FitIns objects are shared between sites: each gets its own copy
                ins = FitIns(ins.parameters, {**ins.config, **witness.to_config()})
            out.append((proxy, ins))
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.last.results = [(r.num_examples, dict(r.metrics)) for _, r in results]
        self.last.node_ids = [node_id(p) for p, _ in results]
        self.last.failures.extend(site_failure(f) for f in failures)
        return self.inner.aggregate_fit(server_round, results, failures)


def _fit_metrics(results: list[tuple[int, dict[str, Any]]]) -> dict[str, float]:
    n = sum(k for k, _ in results) or 1
    out: dict[str, float] = {}
    for key in ("loss", "accuracy"):
        vals = [(k, m[key]) for k, m in results if isinstance(m.get(key), (int, float))]
        if vals:
            out[f"train_{key}"] = sum(k * v for k, v in vals) / n
    return out


class GuardedStrategy(_Wrapper):
    """[robust] in front of Flower's aggregation rule: every site's update (or, under SecAgg+, the unmasked
    aggregate) goes through the `UpdateGuard` and is turned from a delta back into model weights, so FedAvg,
    FedProx, FedAdam and the robust rules aggregate models as ever. A rejected round returns no aggregate
    (the guard says why) and leaves the rule's own state (FedAdam's moments) as it was."""

    def __init__(self, inner: Strategy, guard: UpdateGuard, *, needed: int = 1) -> None:
        self.inner, self.guard, self.needed = inner, guard, needed
        self.global_weights: list[np.ndarray] = []

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self.global_weights = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        guard = self.guard
        if guard.verdict.server_round != server_round:
            guard.begin(server_round)
        if not guard.enabled or not results:
            return self.inner.aggregate_fit(server_round, results, failures)
        start = self.global_weights
        if guard.secure_aggregation:  # every result carries the same unmasked aggregate
            new = guard.aggregate(sent=parameters_to_ndarrays(results[0][1].parameters), global_weights=start,
                                  weights=[res.num_examples for _, res in results])
            if new is None:
                return None, {}
            unmasked = ndarrays_to_parameters(new)
            for _, res in results:
                res.parameters = unmasked
            kept = results
        else:
            kept = []
            for proxy, res in results:
                site = str(res.metrics["site"]) if "site" in res.metrics else f"node {node_id(proxy)}"
                new = guard.site_update(site=site, sent=parameters_to_ndarrays(res.parameters), global_weights=start)
                if new is not None:
                    res.parameters = ndarrays_to_parameters(new)
                    kept.append((proxy, res))
            if len(kept) < self.needed:
                guard.reject(f"{len(kept)} acceptable update(s), fewer than the {self.needed} the aggregation rule "
                             f"needs; the model of the previous round is kept")
                return None, {}
        state = snapshot_vars(self.inner)
        params, metrics = self.inner.aggregate_fit(server_round, kept, failures)
        if params is not None and not guard.check_result(new=parameters_to_ndarrays(params), global_weights=start):
            restore_vars(self.inner, state)
            return None, {}
        return params, metrics


def step_fraction(*, schedule: str, server_round: int, rounds: int, floor: float) -> float:
    """The fraction of round `server_round`'s aggregated update the global model takes (1 = plain aggregation)."""
    if schedule == "constant" or rounds <= 1:
        return 1.0
    progress = (min(server_round, rounds) - 1) / (rounds - 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class ScheduledStep(_Wrapper):
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

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self._sent = {server_round: parameters_to_ndarrays(parameters)}
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        sent = self._sent.get(server_round)
        if params is None or sent is None:
            return params, metrics
        f = step_fraction(schedule=self.schedule, server_round=server_round, rounds=self.rounds, floor=self.floor)
        agg = parameters_to_ndarrays(params)
        stepped = [s + f * (a - s) if np.issubdtype(a.dtype, np.floating) else a
                   for s, a in zip(sent, agg, strict=True)]
        return ndarrays_to_parameters(stepped), metrics


def guard_start(strategy: RecordingStrategy) -> list[np.ndarray]:
    """The global weights the guarded layer was sent this round (what its checks start from)."""
    layer: Any = strategy.inner
    while layer is not None and not isinstance(layer, GuardedStrategy):
        layer = getattr(layer, "inner", None) or getattr(layer, "strategy", None)
    return list(layer.global_weights) if layer is not None else []


def central_noise(strategy: RecordingStrategy) -> list[CentralNoise]:
    """Every round's central-DP noise so far (empty when central DP is off)."""
    return list(getattr(strategy.inner, "applied", []))


def _layers(strategy: RecordingStrategy) -> tuple[Any, Strategy]:
    """(the central-DP wrapper, or None; Flower's aggregation rule) under fedhaven's own wrappers."""
    layer: Any = strategy.inner
    central = None
    while True:
        if isinstance(layer, TolerantCentralDP):
            central, layer = layer, layer.strategy
        elif isinstance(layer, (ScheduledStep, GuardedStrategy)):
            layer = layer.inner
        else:
            return central, layer


def strategy_state(strategy: RecordingStrategy) -> dict[str, Any]:
    """What the strategy learnt so far, as plain values and tensors (a checkpoint loads it without pickle):
    FedAdam's moments, the adaptive clipping norm, and every round's central-DP noise."""
    import torch

    inner, base = _layers(strategy)
    state: dict[str, Any] = {}
    if isinstance(inner, TolerantCentralDP):
        state["central"] = {"clipping_norm": float(inner.clipping_norm), "applied": [asdict(n) for n in inner.applied]}
    if isinstance(base, FedAdam):
        state["fedopt"] = {k: None if v is None else [torch.from_numpy(a) for a in v]
                           for k, v in fedadam_state(base).items()}
    return state


def restore_strategy_state(strategy: RecordingStrategy, state: dict[str, Any], *,
                           weights: Sequence[np.ndarray]) -> None:
    """Put a checkpoint's `strategy_state` back (the global `weights` become FedAdam's current point)."""
    inner, base = _layers(strategy)
    if isinstance(inner, TolerantCentralDP) and "central" in state:
        inner.clipping_norm = float(state["central"]["clipping_norm"])
        inner.applied = [CentralNoise(**n) for n in state["central"]["applied"]]
    if isinstance(base, FedAdam):
        moments = state.get("fedopt", {})
        set_fedadam_state(base, {k: None if moments.get(k) is None else [a.numpy() for a in moments[k]]
                                 for k in ("m_t", "v_t")}, list(weights))


def build_strategy(*, run: RunConfig, initial: Sequence[np.ndarray],
                   fit_config: Callable[[int], dict[str, Any]], guard: UpdateGuard | None = None) -> RecordingStrategy:
    """The configured Flower strategy (FedAvg, FedProx, FedAdam or a robust rule) behind the [robust] guard,
    with fedhaven's task config sent every round."""
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
    elif s.name == "fedmedian":
        inner = FedMedian(**common)
    elif s.name == "trimmedavg":
        inner = FedTrimmedAvg(beta=s.trim_fraction, **common)
    elif s.name in ("krum", "multikrum"):
        keep = 0 if s.name == "krum" else (s.keep or max(1, run.min_sites - s.malicious_sites))
        inner = Krum(num_malicious_clients=s.malicious_sites, num_clients_to_keep=keep, **common)
    elif s.name == "bulyan":
        inner = Bulyan(num_malicious_clients=s.malicious_sites, to_keep=0, **common)
    else:
        inner = FedAvg(**common)
    inner = GuardedStrategy(inner, guard if guard is not None else UpdateGuard(run=run, initial=initial),
                            needed=s.fewest_sites())
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
                                             clipped_count_stddev=c.count_stddev(sites=run.min_sites))
    if s.step_schedule != "constant":
        inner = ScheduledStep(inner, schedule=s.step_schedule, rounds=run.rounds, floor=s.step_floor)
    return RecordingStrategy(inner)


@dataclass(frozen=True)
class FitOutcome:
    """A fit round's outcome: new global weights, or None with the reason no aggregate came out."""

    weights: list[np.ndarray] | None
    log: FitRoundLog
    halted_stage: str | None = None


class _ReplyWatch:
    """Flower's grid, noting in the attempt's `Attendance` which nodes were sent a training task and which of them
    settled it.

    Settled: a reply with content, or a refusal (an error with a fedhaven refusal code: nothing was trained or sent).
    Any other outcome (no reply by the timeout, a node lost, a crash) may hide an update the
    site trained and recorded: its spending can then only be bounded.
    """

    def __init__(self, grid: Grid, attendance: Attendance, registered: Registered | None = None) -> None:
        self._grid = grid
        self.attendance = attendance
        self.registered = registered if registered is not None else Registered()
        self.refused: list[SiteFailure] = []  # training replies that named another site than the node's own

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        tasks = {m.metadata.dst_node_id for m in messages if m.metadata.message_type == MessageType.TRAIN
                 and FITINS_CONFIG in m.content.config_records}
        self.attendance.asked |= tasks
        replies = [r for r in self._grid.send_and_receive(messages, timeout=timeout) if self._named_as_registered(r)]
        for r in replies:
            if r.metadata.src_node_id in tasks and (r.has_content() or code_of(r.error.code) is not None):
                self.attendance.settled.add(r.metadata.src_node_id)
        return replies

    def _named_as_registered(self, reply: Message) -> bool:
        """False (the reply is dropped, the site listed) when a training reply names another site than the one its
        node is registered as."""
        metrics = reply_metrics(reply)
        why = None if metrics is None else self.registered.mismatch(node=reply.metadata.src_node_id,
                                                                     reported=metrics.get("site"))
        if why is None:
            return True
        log.warning("%s", why)
        self.refused.append(SiteFailure(why))
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def secagg_workflow(cfg: SecAggConfig, *, max_weight: float, clipping_range: float | None = None) -> CheckedSecAggPlus:
    """Flower's SecAgg+ workflow for `cfg` (Flower validates the parameters in its constructor)."""
    return CheckedSecAggPlus(num_shares=cfg.num_shares, reconstruction_threshold=cfg.reconstruction_threshold,
                             max_weight=max_weight,
                             clipping_range=cfg.clipping_range if clipping_range is None else clipping_range,
                             quantization_range=cfg.quantization_range, modulus_range=cfg.modulus_range,
                             timeout=cfg.timeout)


class LegacyFederation:
    """Drives Flower's legacy stack one fit round at a time for fedhaven's round loop."""

    def __init__(self, *, grid: Grid, context: Context, run: RunConfig, strategy: RecordingStrategy,
                 max_weight: float | None, on_waiting: Callable[[float, int, int], None] | None = None,
                 name_hint: Callable[[int], str | None] | None = None) -> None:
        self.grid = grid
        self.name_hint = name_hint  # a name for a node not yet heard from, display only (fl-sim: by partition)
        manager = BoundedClientManager(timeout=run.waits.min_sites, report=on_waiting, min_sites=run.min_sites,
                                       report_every=run.waits.report_every)
        self.ctx = LegacyContext(context=context, config=FlowerServerConfig(num_rounds=run.rounds),
                                 strategy=strategy, client_manager=manager)
        self.strategy = strategy
        self.node_sites: dict[int, str] = {}
        self.registered = Registered()  # the registered names of the current round's nodes
        self._secagg_cfg = run.secagg
        self._robust = run.robust
        self.secagg = secagg_workflow(run.secagg, max_weight=max_weight) if max_weight is not None else None
        self.exclusions = Exclusions()  # sites located as bad (kept in checkpoints): never sampled again in the run
        # a located simulated site is left out of a resumed run's first round too: its new node is named by
        # partition before it answers (fl-sim's own sites; leaving a site out can only narrow a round)
        manager.leave_out = self.exclusions.predicate(self._name_or_hint)
        self._thread, self._stop = start_client_manager(grid, manager)
        init_workflow_state(grid, self.ctx)

    def weights(self) -> list[np.ndarray]:
        return global_weights(self.ctx)

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Restore global weights (e.g. from a checkpoint) as the next round's starting point."""
        set_global_weights(self.ctx, list(weights))

    def set_secagg_clipping(self, clipping_range: float) -> None:
        """SecAgg+'s per-coordinate clipping range for the next round: a new workflow, checked by Flower as ever."""
        if self.secagg is not None:
            self.secagg = secagg_workflow(self._secagg_cfg, max_weight=self.secagg.max_weight,
                                          clipping_range=clipping_range)

    def restore_exclusions(self, exclusions: Exclusions) -> None:
        """A checkpoint's located sites: left out of every round of the resumed run (see `locate.exclusions`)."""
        for e in exclusions.by_site.values():
            self.exclusions.by_site.setdefault(e.site, e)

    def available_sites(self) -> int:
        return self.ctx.client_manager.num_available()

    def strategy_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the strategy (see `strategy_state`)."""
        return strategy_state(self.strategy)

    def fit_round(self, server_round: int) -> FitOutcome:
        """One fit round (SecAgg+ or plain); weights None when no aggregate was produced."""
        set_round(self.ctx, server_round)
        self.strategy.last = FitRoundLog()
        before = global_params_record(self.ctx)
        halted = None
        last = self.strategy.last
        if isinstance(self.grid, PollingGrid):
            self.grid.attendance = last.attendance  # this attempt's one record of who was contacted and who was silent
        self.registered = Registered.of(self.grid)
        watch = _ReplyWatch(self.grid, last.attendance, self.registered)
        if self.secagg is not None:
            self.secagg(watch, self.ctx)  # type: ignore[arg-type]  # _ReplyWatch: a Grid by duck typing
            halted = self.secagg.halted_stage
            last.failures.extend(self.secagg.failures)
            # every site that trained, whether or not the sum could be unmasked
            last.node_ids = [n for n, _, _ in self.secagg.collected]
            last.results = [(k, m) for _, k, m in self.secagg.collected]
            if halted is None and global_params_record(self.ctx) is before:
                self._locate(server_round, last)
        else:
            fit_round_plain(watch, self.ctx)
        last.failures.extend(watch.refused)
        last.unanswered = [self._site_name(n) for n in last.attendance.unanswered]
        assert isinstance(self.ctx.client_manager, BoundedClientManager)  # the one __init__ gave the context
        self.ctx.client_manager.suspect(last.attendance.silent)
        self._witness(last)
        after = global_params_record(self.ctx)
        shortfall = getattr(self.ctx.client_manager, "shortfall", None)
        if shortfall:
            self.strategy.last.failures.append(SiteFailure(shortfall))
        if after is before:
            return FitOutcome(weights=None, log=self.strategy.last,
                              halted_stage=halted or ("waiting for sites" if shortfall else "aggregate"))
        return FitOutcome(weights=self.weights(), log=self.strategy.last)

    def _guard(self) -> UpdateGuard | None:
        layer: Any = self.strategy.inner
        while layer is not None and not isinstance(layer, GuardedStrategy):
            layer = getattr(layer, "inner", None) or getattr(layer, "strategy", None)
        return layer.guard if layer is not None else None

    def _locate(self, server_round: int, last: FitRoundLog) -> None:
        """The guard rejected the round's unmasked sum: search re-masked groups for the bad site(s) (`locate`); on
        success the round's model is the other sites' sum and the located sites are left out of the run."""
        from fedhaven.server.locate.remasked import locate

        guard = self._guard()
        if (guard is None or not guard.enabled or not guard.verdict.rejected or not self._robust.locate
                or self.secagg is None):
            return
        rejected = guard.verdict.rejected
        nodes = [n for n, _, _ in self.secagg.collected]
        metrics = {n: m for n, _, m in self.secagg.collected}

        def aggregate(results: list[tuple[ClientProxy, FitRes]]) -> Parameters | None:
            guard.verdict.rejected = None  # the honest group's sum is tested afresh by the round's own checks
            params, _ = self.strategy.inner.aggregate_fit(server_round, results, [])
            return params

        def name(node: int) -> str:  # the authenticated name where there is one, else the one the reply gave
            claimed = metrics.get(node, {}).get("site")
            return self.registered.name_of(node) or (str(claimed) if claimed else self._site_name(node))

        found = locate(server_round=server_round, nodes=nodes, names=name, metrics=metrics,
                       sent=self.strategy.sent, workflow=self.secagg, ctx=self.ctx,
                       grid=_ReplyWatch(self.grid, Attendance(), self.registered), guard=guard, aggregate=aggregate,
                       global_weights=guard_start(self.strategy), min_group=self._robust.locate_min_group,
                       max_bad=self._robust.locate_max_bad, max_groups=self._robust.locate_max_groups)
        last.locate_groups, last.locate_time_s, last.locate_note = found.groups, found.seconds, found.note
        if found.params is None:
            guard.verdict.rejected = f"{rejected}; {found.note}"
            log.error("round %d: %s", server_round, found.note)
            return
        set_global_weights(self.ctx, parameters_to_ndarrays(found.params))
        assert isinstance(self.ctx.client_manager, BoundedClientManager)
        self.ctx.client_manager.exclude(found.located)
        last.located = [name(n) for n in found.located]
        for n in found.located:
            self.exclusions.add(site=name(n), server_round=server_round, node=n, reason=rejected,
                                groups=found.evidence)
        for site in last.located:  # counted as a site whose update the guard rejected
            guard.verdict.site_rejections.append(f"{site}: its update broke the round's sum (found by re-masked "
                                                 f"groups); left out of the rest of the run")
        log.warning("round %d: the sum was rejected (%s); %s (%.1f s); left out of the rest of the run",
                    server_round, rejected, found.note, found.seconds)

    def _witness(self, log: FitRoundLog) -> None:
        """Remember, per site, the ledger entry each training reply was recorded as."""
        if len(log.node_ids) != len(log.results):
            return
        for node, (_, metrics) in zip(log.node_ids, log.results, strict=True):
            witness = Witness.from_metrics(metrics)
            if witness is not None:
                self.node_sites[node] = witness.site
                if self.strategy.witnesses is not None:
                    self.strategy.witnesses.record(node_id=node, witness=witness)

    def known_name(self, node: int) -> str | None:
        """The name of the site on `node`: registered with the SuperLink, or given by its replies; None before."""
        name = self.registered.name_of(node) or self.node_sites.get(node)
        if name is None and self.strategy.witnesses is not None:
            name = self.strategy.witnesses.site_of(node)
        return name

    def _name_or_hint(self, node: int) -> str | None:
        return self.known_name(node) or (self.name_hint(node) if self.name_hint else None)

    def _site_name(self, node: int) -> str:
        return self._name_or_hint(node) or f"node {node}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
