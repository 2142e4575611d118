"""The coordinator's Prometheus metrics (prometheus-client), computed at each scrape from the federation's state.

A custom collector rather than counters updated in place: the rounds are recorded by the ServerApp processes
(metrics.jsonl in each run directory) and the sites' state by the SuperLink, so the numbers are read from there
when Prometheus asks, and a restarted coordinator reports the same totals (prometheus-client's documented way of
exposing another system's state).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from fedhaven.server.console.view import FederationView

#: Round duration buckets, seconds: a loopback round takes a few seconds, a field round minutes.
ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class FederationCollector(Collector):
    """Sites registered/online, runs, rounds done/rejected/failed, refusals by reason, round duration, each site's
    epsilon. `read` returns the federation at the moment of the scrape."""

    def __init__(self, read: Callable[[], FederationView]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        view = self.read()
        up = GaugeMetricFamily("fedhaven_control_api_up", "1 when the SuperLink's Control API answered this scrape")
        up.add_metric([], 0.0 if view.control_error else 1.0)
        yield up
        sites = GaugeMetricFamily("fedhaven_sites", "Sites in the coordinator's registry, by registry status",
                                  labels=["status"])
        by_status = Counter(s.status for s in view.sites)
        for status in ("pending", "registered", "revoked"):
            sites.add_metric([status], float(by_status[status]))
        yield sites
        online = GaugeMetricFamily("fedhaven_sites_online", "Registered sites the SuperLink sees online")
        online.add_metric([], float(sum(s.online for s in view.sites)))
        yield online
        site_up = GaugeMetricFamily("fedhaven_site_online", "1 while the site is online", labels=["site"])
        eps = GaugeMetricFamily("fedhaven_site_epsilon",
                                "Each site's cumulative epsilon, newest as the site reported it (+Inf: not private)",
                                labels=["site"])
        for s in view.sites:
            site_up.add_metric([s.name], 1.0 if s.online else 0.0)
            if s.epsilon is not None:
                eps.add_metric([s.name], s.epsilon)
        yield site_up
        yield eps
        runs = GaugeMetricFamily("fedhaven_runs", "Runs, by status (running, finished, interrupted, ...)",
                                 labels=["status"])
        for status, n in sorted(Counter(r.status.split(":")[0] for r in view.runs).items()):
            runs.add_metric([status], float(n))
        yield runs
        yield from self._rounds(view)

    @staticmethod
    def _rounds(view: FederationView) -> Iterator[Metric]:
        rounds = CounterMetricFamily("fedhaven_rounds", "Round attempts over all runs, by outcome: ok (aggregated), "
                                     "rejected (the [robust] guard kept the previous model), failed (no aggregate)",
                                     labels=["outcome"])
        outcome = Counter(r.status for run in view.runs for r in run.rounds)
        for status in ("ok", "rejected", "failed"):
            rounds.add_metric([status], float(outcome[status]))
        yield rounds
        refusals = CounterMetricFamily("fedhaven_site_refusals",
                                       "Tasks sites refused, by the refusal's code (fedhaven.shared.refusal)",
                                       labels=["reason"])
        for code, n in sorted(view.refusals.items()):
            refusals.add_metric([code.lower()], float(n))
        yield refusals
        durations = [r.round_time_s for run in view.runs for r in run.rounds if r.status in ("ok", "rejected", "failed")
                     and math.isfinite(r.round_time_s)]
        buckets = [(str(b), float(sum(d <= b for d in durations))) for b in ROUND_BUCKETS]
        hist = HistogramMetricFamily("fedhaven_round_duration_seconds", "Wall time of each round attempt",
                                     buckets=[*buckets, ("+Inf", float(len(durations)))], sum_value=sum(durations))
        yield hist


def metrics_registry(read: Callable[[], FederationView]) -> CollectorRegistry:
    """A registry holding only the federation's metrics (no process metrics of the web server's own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FederationCollector(read))
    return registry
