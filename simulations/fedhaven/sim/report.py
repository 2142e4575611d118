"""What a researcher reads after a run: summary.json (also printed); the coordinator draws the plots (server.plots)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhaven.server.federation import RunResult
from fedhaven.server.privacy_report import format_epsilon
from fedhaven.shared.files import write_atomic
from fedhaven.shared.schema import ExperimentConfig


@dataclass(frozen=True)
class Summary:
    """The headline of a finished simulation."""

    data: dict[str, Any]
    path: Path

    def text(self) -> str:
        d = self.data
        acc = d["final_accuracy"]
        if not d["dp"]:
            privacy = "NONE (DP was off): epsilon ∞, not private"
        elif not d["private"]:
            privacy = "NOT PRIVATE: a site trained without noise (epsilon ∞)"
        elif d["epsilon_max"] is None:
            privacy = "no site reported an epsilon"
        else:
            privacy = (f"epsilon <= {d['epsilon_max']:.3f} per site at delta {d['delta']:g} "
                       f"({d['accountant']} accountant)")
        lines = [f"experiment     {d['experiment']}  ({d['sites']} sites, {d['partition']}, {d['rounds']} rounds)",
                 f"test accuracy  {acc * 100:.2f}%" if acc is not None else "test accuracy  n/a",
                 f"privacy        {privacy}"]
        if d.get("central_dp") is not None:
            lines.append(f"central DP     epsilon {format_epsilon(d['central_dp'])} at delta {d['central_delta']:g} "
                         f"(client level)")
        lines += [f"secure agg.    {'SecAgg+' if d['secure_aggregation'] else 'OFF'}",
                  f"wall time      {d['wall_time_s']:.1f} s",
                  f"run directory  {d['run_dir']}"]
        tracking = d.get("tracking")
        if tracking:
            lines.append(f"tracking       MLflow {tracking['tracking_uri']} (experiment {tracking['experiment_id']}); "
                         f"tensorboard --logdir {d['run_dir']}/tensorboard")
        if d.get("rounds_rejected"):
            lines.append(f"rejected       {d['rounds_rejected']} round(s) rejected by the [robust] guard, the previous "
                         f"model kept (metrics.jsonl says why)")
        if d.get("stopped"):
            lines.append(f"stopped        {d['stopped']}")
        return "\n".join(lines)


def _tracking(run_dir: Path) -> dict[str, Any] | None:
    """Where the coordinator logged the run in MLflow (its tracking.json), or None when it did not."""
    from fedhaven.server.tracking import TRACKING_FILE

    try:
        data = json.loads((run_dir / TRACKING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summarize(*, exp: ExperimentConfig, result: RunResult, wall_time_s: float) -> Summary:
    """summary.json from the run and its privacy report: epsilons follow the report's one rule, never recomputed."""
    assert result.privacy is not None, "run_federation writes the privacy report"
    report = result.privacy.data
    ok = [r for r in result.rounds if r.status == "ok"]
    last = ok[-1] if ok else None
    sites = {name: {k: row[k] for k in ("epsilon", "private", "noise_multiplier", "sample_rate", "steps",
                                        "num_examples", "history", "history_complete")}
             for name, row in report["sites"].items()}
    central = report["central_dp"]
    data = {
        "experiment": exp.name,
        "sites": exp.sites,
        "partition": exp.partition,
        "rounds": len({r.round for r in ok}),  # a round redone after a resume counts once
        "rounds_rejected": sum(r.status == "rejected" for r in result.rounds),
        "final_accuracy": last.accuracy if last else None,
        "final_loss": last.loss if last else None,
        "best_accuracy": max((r.accuracy for r in ok if r.accuracy is not None), default=None),
        "dp": exp.dp.enabled,
        "private": report["private"],
        "delta": exp.dp.delta if exp.dp.enabled else None,
        "accountant": exp.dp.accountant,
        "epsilon_max": report["epsilon_max"],
        "epsilon_per_site": {k: v["epsilon"] for k, v in sites.items()},
        "privacy_per_site": sites,
        "central_dp": central["epsilon"] if central["enabled"] else None,
        "central_delta": central["delta"] if central["enabled"] else None,
        "recompute": "each site's epsilon = Opacus' RDPAccountant (or PRV) with history = the site's "
                     "[noise_multiplier, sample_rate, steps] rows (its `history`: every round it trained, retried "
                     "attempts included), get_epsilon(delta); null epsilon: not private (infinite)",
        "secure_aggregation": exp.secagg.enabled,
        "stopped": report["stopped"],
        "wall_time_s": wall_time_s,
        "run_dir": str(result.run_dir),
        "tracking": _tracking(result.run_dir),
    }
    path = result.run_dir / "summary.json"
    write_atomic(path, json.dumps(data, indent=2).encode())
    return Summary(data=data, path=path)
