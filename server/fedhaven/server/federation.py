"""The coordinator's round loop: fit, refuse a round without aggregate, evaluate centrally, record, checkpoint,
and write the privacy report (the one place it is built, for simulation and deployment)."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedhaven.server.checkpoints import load_checkpoint
from fedhaven.server.failures import NoRoundTrained, RoundFailed
from fedhaven.server.flower_legacy import (
    FitRoundLog,
    LegacyFederation,
    build_strategy,
    central_noise,
    restore_strategy_state,
)
from fedhaven.server.guard import CachedEvaluator, Evaluator, UpdateGuard
from fedhaven.server.latency import grid_poll
from fedhaven.server.latency.grid import PartitionNames, PollingGrid, describe_nodes
from fedhaven.server.locate.exclusions import Exclusions
from fedhaven.server.model_card import write_release
from fedhaven.server.privacy_report import PrivacyReport, build_privacy_report, worst_epsilon
from fedhaven.server.recorder import RunRecorder
from fedhaven.server.records import CentralNoise, RoundRecord, SiteReport
from fedhaven.server.site_statistics import record_site_statistics
from fedhaven.server.tracking import RunTracker
from fedhaven.server.witnesses import SiteWitnesses
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.task import task_for_round, task_to_config
from fedhaven.shared.weights import get_weights

log = logging.getLogger("fedhaven.server")


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, final weights, every round's record and each site's last privacy report."""

    run_dir: Path
    weights: list[np.ndarray]
    rounds: list[RoundRecord]
    sites: dict[str, SiteReport]
    wall_time_s: float
    central_noise: list[CentralNoise] = field(default_factory=list)
    stopped: str | None = None  # why the run ended before its last round, if it did
    privacy: PrivacyReport | None = None  # written beside the model as privacy.json / privacy.md


def _number(value: object) -> float:
    """A site-reported number as a float; NaN for anything else (a hostile site may send any value)."""
    try:
        return float(value)  # type: ignore[arg-type]  # any value: float() refusing it is caught below
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _count(value: object, default: int) -> int:
    """A site-reported count: a finite whole number >= 0, else `default`."""
    v = _number(value)
    return int(v) if math.isfinite(v) and v >= 0 and v == int(v) else default


def site_report(*, num_examples: int, metrics: Mapping[str, object], max_delta: float = 1.0) -> SiteReport:
    """One site's metrics, typed; the coordinator trusts no site, so nothing it sends can break the bookkeeping.

    Unreadable or out-of-range values are replaced, pessimistically: a privacy field (epsilon, its delta,
    noise, sample rate, steps) that cannot be read, or a delta above `max_delta` (the run's: an epsilon at a
    larger delta says less), makes the site's stated epsilon infinite, never smaller; loss and accuracy
    become NaN; a bad example count falls back to the count Flower's reply carried.
    """
    m = metrics
    eps = _number(m.get("epsilon", math.inf))
    delta = _number(m.get("delta", 0.0))
    bad_delta = "delta" in m and not (0 < delta < 1 and delta <= max_delta * (1 + 1e-9))
    noise, rate = _number(m.get("noise_multiplier", 0.0)), _number(m.get("sample_rate", 0.0))
    steps, total = _count(m.get("steps", 0), -1), _count(m.get("total_steps", 0), -1)
    unreadable = (math.isnan(eps) or eps < 0 or bad_delta or not math.isfinite(noise) or noise < 0
                  or not (math.isfinite(rate) and 0 <= rate <= 1) or steps < 0 or total < 0)
    return SiteReport(site=str(m.get("site", "?"))[:200], num_examples=_count(m.get("num_examples", num_examples),
                                                                               max(0, int(num_examples))),
                      loss=_number(m.get("loss", math.nan)), accuracy=_number(m.get("accuracy", math.nan)),
                      epsilon=math.inf if unreadable else eps, delta=delta if math.isfinite(delta) else math.nan,
                      noise_multiplier=noise if math.isfinite(noise) and noise >= 0 else 0.0,
                      sample_rate=rate if math.isfinite(rate) and 0 <= rate <= 1 else 0.0,
                      steps=max(steps, 0), total_steps=max(total, 0),
                      train_time_s=_number(m.get("train_time_s", 0.0)), update_norm=_number(m.get("update_norm")))


def site_reports(fit_log: FitRoundLog, *, max_delta: float = 1.0) -> list[SiteReport]:
    """Each site's metrics from one fit round, typed (see `site_report`)."""
    return [site_report(num_examples=n, metrics=m, max_delta=max_delta) for n, m in fit_log.results]


def run_federation(
    *,
    grid: Any,
    context: Any,
    run: RunConfig,
    run_dir: Path,
    input_spec: InputSpec,
    classes: tuple[str, ...],
    evaluator: Evaluator | None,
    max_weight: float | None,
    on_round: Callable[[RoundRecord], None] | None = None,
    witnesses: SiteWitnesses | None = None,
    audit: Callable[[list[np.ndarray]], dict[str, Any]] | None = None,
    ledger_command: str | None = None,
    explain: Callable[[list[np.ndarray]], object] | None = None,
    site_names: Sequence[str] = (),
) -> RunResult:
    """Run `run.rounds` rounds on Flower's grid and write the privacy report, in every outcome.

    Raises RoundFailed when a round yields no aggregate after retries, and NoRoundTrained when
    the run ends (e.g. every site refused for lack of budget) without one aggregated round: a
    run that trained nothing is never a success. `witnesses` keeps what the coordinator saw of
    each site's ledger (in memory unless given a file); `audit` computes an empirical check on
    the final weights (simulation); `ledger_command` is how a site recomputes its epsilon; `explain` writes
    RUN_DIR/explain from the final weights on the coordinator's own test data (a failure there is logged, never
    fails the run); `site_names` (simulation) names the sites by partition id, so that a wait names a site that has
    not answered yet (`PartitionNames`).
    """
    start = time.perf_counter()
    resume = None
    if run.resume_from:
        resume, skipped = load_checkpoint(run_dir=run_dir, run=run, input_spec=input_spec)
    tracker = RunTracker(run=run, run_dir=run_dir, resuming=resume is not None)  # MLflow, TensorBoard, metrics.csv
    recorder = RunRecorder(run_dir=run_dir, run=run, input_spec=input_spec, classes=classes,
                           on_round=tracker.chain(on_round), resuming=resume is not None)
    initial = get_weights(build_model(cfg=run.model, spec=input_spec, seed=run.seed, dp=run.dp.enabled))
    evaluator = CachedEvaluator(evaluator) if evaluator is not None else None
    guard = UpdateGuard(run=run, initial=initial, evaluator=evaluator, max_weight=max_weight)  # [robust]

    def fit_config(server_round: int) -> dict[str, Any]:
        task = task_for_round(run=run, server_round=server_round, input_spec=input_spec, classes=classes)
        return task_to_config(replace(task, **guard.task_fields(server_round)))

    strategy = build_strategy(run=run, initial=initial, fit_config=fit_config, guard=guard)
    strategy.witnesses = witnesses if witnesses is not None else SiteWitnesses()
    inner = grid
    named: list[LegacyFederation] = []  # the federation, once built: it knows the sites' names

    partitions = PartitionNames(grid, site_names) if site_names else None

    def known_name(node: int) -> str | None:
        return named[0].known_name(node) if named else None

    def name_hint(node: int) -> str | None:
        return partitions.name_of(node, known=known_name) if partitions is not None else None

    def name_of(node: int) -> str | None:
        return known_name(node) or name_hint(node)

    def waiting_for_replies(waited: float, missing: frozenset[int]) -> None:
        log.warning("waiting %.0f s for %d site(s) to answer: %s", waited, len(missing),
                    describe_nodes(inner, missing, name_of=name_of))

    def waiting_for_sites(waited: float, need: int, have: int) -> None:
        log.warning("waiting %.0f s for %d sites (min_sites), %d connected: %s", waited, need, have,
                    describe_nodes(inner, name_of=name_of))

    # Flower's own grid may wait forever; ours gives up after the stage timeout and says who is missing, polling
    # fast with the latency shims on and at Flower's 3 s with them off (fedhaven.server.latency).
    poll_min, poll_max = grid_poll()
    grid = PollingGrid(grid, timeout=run.waits.stage, report_every=run.waits.report_every,
                       on_wait=waiting_for_replies, poll_min=poll_min, poll_max=poll_max)
    fed = LegacyFederation(grid=grid, context=context, run=run, strategy=strategy, on_waiting=waiting_for_sites,
                           max_weight=max_weight if run.secagg.enabled else None, name_hint=name_hint)
    named.append(fed)
    weights = fed.weights()
    first = 1
    stopped, failure = None, None
    try:
        if resume is not None:
            weights, first = resume.weights, resume.round + 1
            fed.set_weights(weights)
            restore_strategy_state(strategy, resume.blob["strategy"], weights=weights)
            fed.restore_exclusions(Exclusions.from_blob(resume.blob.get("excluded")))  # located sites stay out
            recorder.restore(resume)
            guard.observe_norms([r.update_norm for r in recorder.sites.values()])  # the bound picks up where it was
            why = (f"continued after round {resume.round} from {resume.path.name}"
                   + (f"; newer checkpoints skipped: {'; '.join(skipped)}" if skipped else "")
                   + (f"; left out as located: {', '.join(e.summary() for e in fed.exclusions.by_site.values())}"
                      if fed.exclusions else ""))
            log.warning("resuming %s: %s", run_dir, why)
            recorder.record(RoundRecord(round=resume.round, status="resumed", attempt=0, loss=None, accuracy=None,
                                        epsilon_max=None, epsilon_mean=None, sites_ok=0, sites_failed=0,
                                        round_time_s=0.0, fit_time_s=0.0, eval_time_s=0.0,
                                        secure_aggregation=run.secagg.enabled, failures=(why,)))
        elif evaluator is not None:
            loss, acc = evaluator(weights)
            recorder.record(RoundRecord(round=0, status="initial", attempt=0, loss=loss, accuracy=acc,
                                        epsilon_max=0.0, epsilon_mean=0.0, sites_ok=0, sites_failed=0,
                                        round_time_s=0.0, fit_time_s=0.0, eval_time_s=0.0,
                                        secure_aggregation=run.secagg.enabled))
        for server_round in range(first, run.rounds + 1):
            try:
                weights = _one_round(fed=fed, run=run, server_round=server_round, recorder=recorder,
                                     evaluator=evaluator, guard=guard)
            except RoundFailed as exc:
                if not exc.budget_exhausted:
                    failure = exc
                    break
                stopped = (f"stopped cleanly before round {server_round}: too few sites have privacy budget left "
                           f"({len(exc.failures)} refused: {exc.failures[0]})")
                log.warning("%s", stopped)
                if not any(r.status == "ok" for r in recorder.rounds):
                    failure = NoRoundTrained(f"no round produced an aggregate: every site refused for lack of "
                                             f"privacy budget ({len(exc.failures)} refused: {exc.failures[0]})",
                                             failures=exc.failures)
                break
        if failure is None and not any(r.status == "ok" for r in recorder.rounds):
            failure = NoRoundTrained(f"no round was accepted: {sum(r.status == 'rejected' for r in recorder.rounds)} "
                                     f"rejected by the [robust] guard, last: {guard.verdict.rejected}")
        if failure is None:
            recorder.finish(weights=weights)
    finally:
        fed.close()
    trained = any(r.status == "ok" for r in recorder.rounds)
    if explain is not None and trained and failure is None:
        explain(weights)  # before the privacy report and model card, which read explain/explain.json
    report = build_privacy_report(
        run=run, sites=dict(recorder.sites), epsilons=recorder.epsilons(), rounds=recorder.rounds,
        max_weight=max_weight, central=central_noise(strategy),
        stopped=str(failure) if failure is not None else stopped,
        outcome="failed" if failure is not None else ("stopped" if stopped else "completed"),
        membership_inference=audit(weights) if audit is not None and trained and failure is None else None,
        ledger_command=ledger_command, histories=recorder.histories)
    report.write(run_dir)
    if failure is None:  # model.safetensors, model.onnx, MODEL_CARD.md: each failure one error line, never fatal
        write_release(run_dir=run_dir, run=run, spec=input_spec, classes=classes, weights=weights,
                      rounds=recorder.rounds, privacy=report.data)
    tracker.finish(rounds=recorder.rounds, outcome=report.data["outcome"])  # plots, artifacts: never fails the run
    if failure is not None:
        raise failure
    return RunResult(run_dir=run_dir, weights=weights, rounds=recorder.rounds, sites=dict(recorder.sites),
                     wall_time_s=time.perf_counter() - start, central_noise=central_noise(strategy), stopped=stopped,
                     privacy=report)


def _one_round(*, fed: LegacyFederation, run: RunConfig, server_round: int, recorder: RunRecorder,
               evaluator: Evaluator | None, guard: UpdateGuard | None = None) -> list[np.ndarray]:
    attempts = run.round_retries + 1
    for attempt in range(1, attempts + 1):
        t0 = time.perf_counter()
        scored = getattr(evaluator, "seconds", 0.0)  # the guard may evaluate inside the fit (CachedEvaluator)
        if guard is not None:
            guard.begin(server_round)
            if getattr(fed, "secagg", None) is not None and guard.coordinate_range is not None:
                fed.set_secagg_clipping(guard.coordinate_range)  # deltas: SecAgg+'s clip bounds each site's say
        outcome = fed.fit_round(server_round)
        record_site_statistics(run_dir=recorder.run_dir, results=outcome.log.results, server_round=server_round)
        guard_eval = getattr(evaluator, "seconds", 0.0) - scored
        fit_time = time.perf_counter() - t0 - guard_eval
        verdict = guard.end() if guard is not None else None
        rejected_sites = tuple(verdict.site_rejections) if verdict is not None else ()
        reports = site_reports(outcome.log, max_delta=run.dp.delta if run.dp.enabled else 1.0)
        if guard is not None:
            guard.observe_norms([r.update_norm for r in reports])  # what the next round's bound follows
        # every site that trained counts, also in an attempt that yields no aggregate
        recorder.site_reports(reports, unanswered=outcome.log.unanswered, server_round=server_round,
                              attempt=attempt)
        eps_all = recorder.epsilons()
        worst = worst_epsilon(eps_all.values())
        finite = [e for e in eps_all.values() if math.isfinite(e)]
        # each site once, however many stages it failed in; a site whose update the guard rejected counts as failed
        failed = max(0, outcome.log.asked - len(reports)) if outcome.log.asked else len(outcome.log.failures)
        common: dict[str, Any] = dict(
            round=server_round, attempt=attempt, sites_ok=len(reports) - len(rejected_sites),
            sites_failed=failed + len(rejected_sites), sites_rejected=len(rejected_sites),
            fit_time_s=fit_time,
            sites_available=fed.available_sites(),
            site_train_time_s=sum(r.train_time_s for r in reports),
            secure_aggregation=run.secagg.enabled, epsilons=eps_all,
            failures=(*(f.text for f in outcome.log.failures), *rejected_sites),
            refusals=dict(Counter(f.code.name for f in outcome.log.failures if f.code is not None)),
            unanswered=tuple(outcome.log.unanswered),
            update_norm=verdict.update_norm if verdict is not None else None,
            update_bound=verdict.bound if verdict is not None else None,
            epsilon_max=worst, private=run.dp.enabled and (worst is None or math.isfinite(worst)),
            epsilon_mean=statistics.fmean(finite) if finite else None,
            located=tuple(outcome.log.located), locate_groups=outcome.log.locate_groups,
            locate_time_s=outcome.log.locate_time_s, locate_note=outcome.log.locate_note)
        if verdict is not None and verdict.rejected:  # [robust]: the round is spent, its model never used
            recorder.record(RoundRecord(status="rejected", loss=verdict.loss_after, accuracy=None,
                                        round_time_s=time.perf_counter() - t0, eval_time_s=guard_eval,
                                        rejected=verdict.rejected, **common))
            assert guard is not None  # the verdict is the guard's
            guard.stop_if_repeated(run_dir=recorder.run_dir)
            return fed.weights()
        if outcome.weights is None:
            why = f"no aggregate (halted at {outcome.halted_stage})"
            recorder.record(RoundRecord(status="failed", loss=None, accuracy=None, round_time_s=fit_time,
                                        eval_time_s=0.0, **common))
            reasons = "; ".join(f.text for f in outcome.log.failures[:5]) or "no site error was reported"
            log.error("round %d attempt %d/%d failed: %s. Site errors: %s", server_round, attempt, attempts, why,
                      reasons)
            if attempt == attempts:
                raise RoundFailed(f"round {server_round} produced no aggregate in {attempts} attempt(s), last "
                                  f"{why}; site errors: {reasons}. The global model of round {server_round - 1} "
                                  f"is kept in {recorder.run_dir}", failures=tuple(outcome.log.failures))
            continue
        t1 = time.perf_counter()
        loss, acc = evaluator(outcome.weights) if evaluator is not None else (None, None)
        eval_time = time.perf_counter() - t1 + guard_eval
        located = getattr(fed, "exclusions", None)  # sites located as bad stay out of a resumed run too
        recorder.checkpoint(server_round=server_round, weights=outcome.weights, strategy=fed.strategy_state(),
                            excluded=located.to_blob() if located is not None else ())
        recorder.record(RoundRecord(status="ok", loss=loss, accuracy=acc, round_time_s=time.perf_counter() - t0,
                                    eval_time_s=eval_time, **common))
        return outcome.weights
    raise AssertionError("unreachable")
