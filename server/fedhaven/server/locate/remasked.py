"""Finding the site that broke a SecAgg+ round's sum: re-masked subgroup sums of the updates already sent, tested by
the guard, planned by `planner.Locator` (Flower's public API, and the coordinator's SecAgg+ workflow, only).

Each group is one more SecAgg+ round (fresh masks) over its members, who are sent the round's own task again with
the ledger entry of the update they sent, and whose setup carries the group's member list and the round's
(`fedhaven.shared.remask`): every member signs its keys over that list, so with a roster no member can be put in a
different group behind its neighbours' backs. The sites train nothing and record no spend. A group's sum is
unmasked and tested by the guard; the sum without the located sites is the round's aggregate (through the
strategy: guard, central DP, schedule), and the located sites are left out of the rest of the run.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server import ClientManager
from flwr.server.strategy import Strategy

from fedhaven.server.guard import UpdateGuard
from fedhaven.server.locate.planner import Locator, NoPlan
from fedhaven.server.seam.legacy import CheckedSecAggPlus, ClientProxy
from fedhaven.shared.remask import ENTRY_KEY, MEMBERS_KEY, ROUND_KEY, RemaskRequest
from fedhaven.shared.witness import LEDGER_HASH

log = logging.getLogger("fedhaven.server")


class _Group(Strategy):
    """The strategy of one re-masked group: the round's task to each member, with the re-mask request; the
    unmasked sum kept (never aggregated into the model here)."""

    def __init__(self, *, server_round: int, sent: dict[int, FitIns], members: frozenset[int], digest: str,
                 entries: dict[int, str]) -> None:
        self.server_round, self.sent, self.members, self.digest, self.entries = (
            server_round, sent, members, digest, entries)
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        out = []
        for proxy in client_manager.all().values():
            node = int(getattr(proxy, "node_id", None) or proxy.cid)
            if node in self.members and node in self.sent:
                ins = self.sent[node]
                out.append((proxy, FitIns(ins.parameters, {**ins.config, ROUND_KEY: self.server_round,
                                                           ENTRY_KEY: self.entries.get(node, ""),
                                                           MEMBERS_KEY: self.digest})))
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException],
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.results = list(results)
        return None, {}

    # unused by a fit round
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[Any]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any],
                           ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


@dataclass
class Search:
    """What a search found: located nodes, the honest group's aggregate (None: the round stays rejected), its
    note, groups unmasked, seconds spent and each group's verdict (the evidence kept with an exclusion)."""

    located: list[int] = field(default_factory=list)
    params: Parameters | None = None
    note: str = ""
    groups: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    evidence: list[tuple[tuple[str, ...], bool]] = field(default_factory=list)  # (group's sites, passed?) in order


def locate(*, server_round: int, nodes: Sequence[int], names: Callable[[int], str], metrics: dict[int, dict[str, Any]],
           sent: dict[int, FitIns], workflow: CheckedSecAggPlus, ctx: Any, grid: Any, guard: UpdateGuard,
           aggregate: Callable[[list[tuple[ClientProxy, FitRes]]], Parameters | None], global_weights: list[np.ndarray],
           min_group: int, max_bad: int, max_groups: int) -> Search:
    """Search the rejected round's sites (`nodes`) for the bad one(s); `aggregate` is the round's strategy (it
    tests the honest group's sum once more and turns it into the new model)."""
    t0 = time.perf_counter()
    out = Search()
    threshold = workflow.reconstruction_threshold
    smallest = max(min_group, threshold if isinstance(threshold, int) else 2, 3)
    entries = {n: str(metrics.get(n, {}).get(LEDGER_HASH, "")) for n in nodes}
    round_sites = tuple(sorted(names(n) for n in nodes))
    try:
        locator = Locator(sites=tuple(nodes), k=min_group, min_group=smallest, max_bad=max_bad)
        while (group := locator.next_group()) is not None:
            if out.groups >= max_groups:
                raise NoPlan(f"{max_groups} groups tried (robust.locate_max_groups)")
            req = RemaskRequest(server_round, tuple(sorted(names(n) for n in group)), round_sites)
            strategy = _Group(server_round=server_round, sent=sent, members=group, digest=req.digest,
                              entries=entries)
            run = copy.copy(workflow)
            run.setup_record = req.to_record()
            saved = ctx.strategy
            ctx.strategy = strategy
            try:
                run(grid, ctx)
            finally:
                ctx.strategy = saved
            out.groups += 1
            if run.halted_stage is not None or len(strategy.results) != len(group):
                why = "; ".join(f.text for f in run.failures) or "a site did not answer"
                out.failures += [f.text for f in run.failures]
                raise NoPlan(f"a re-masked group halted at SecAgg+ stage {run.halted_stage or 'unmask'}: {why}")
            final = locator.located and group == frozenset(nodes) - locator.located
            if final:
                params = aggregate(strategy.results)
                passed = params is not None
                if passed:
                    out.params = params
            else:
                first = strategy.results[0][1]
                reason = guard.test_sum(sent=parameters_to_ndarrays(first.parameters), global_weights=global_weights,
                                        weights=[r.num_examples for _, r in strategy.results])
                passed = reason is None
            log.info("round %d: re-masked group of %d site(s) %s", server_round, len(group),
                     "passed" if passed else "failed")
            out.evidence.append((tuple(sorted(names(n) for n in group)), passed))
            locator.record(group, passed=passed)
        out.located = sorted(locator.located)
        out.note = (f"located {', '.join(names(n) for n in out.located)} in {out.groups} re-masked group(s); the "
                    f"round's sum was taken over the other {len(nodes) - len(out.located)} site(s).")
    except NoPlan as exc:
        out.note = f"the bad site could not be located: {exc}"
        out.params = None
    out.seconds = time.perf_counter() - t0
    return out
