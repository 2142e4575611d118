"""What a researcher reads after a run: summary.json (also printed) and PNG plots of accuracy and epsilon per round."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhaven.server.federation import RunResult
from fedhaven.server.privacy_report import format_epsilon
from fedhaven.server.records import RoundRecord, finite_or_none
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
        if d.get("rounds_rejected"):
            lines.append(f"rejected       {d['rounds_rejected']} round(s) rejected by the [robust] guard, the previous "
                         f"model kept (metrics.jsonl says why)")
        if d.get("stopped"):
            lines.append(f"stopped        {d['stopped']}")
        return "\n".join(lines)


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
    }
    path = result.run_dir / "summary.json"
    write_atomic(path, json.dumps(data, indent=2).encode())
    return Summary(data=data, path=path)


def plot_rounds(*, rounds: list[RoundRecord], run_dir: Path, title: str) -> list[Path]:
    """accuracy.png and epsilon.png per round; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rounds if r.status in ("ok", "initial")]
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r.round for r in ok], [100 * r.accuracy if r.accuracy is not None else math.nan for r in ok], "o-")
    ax.set(xlabel="round", ylabel="test accuracy (%)", title=f"{title}: accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=120)
    out.append(run_dir / "accuracy.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    done = [r for r in ok if r.round > 0]
    sites = sorted({s for r in done for s in r.epsilons})
    for s in sites:
        ax.plot([r.round for r in done], [finite_or_none(r.epsilons.get(s)) or math.nan for r in done],
                color="grey", alpha=0.3, lw=1)
    ax.plot([r.round for r in done], [finite_or_none(r.epsilon_max) or math.nan for r in done], "o-",
            color="C3", label="max over sites")
    ax.set(xlabel="round", ylabel="epsilon (cumulative)", title=f"{title}: privacy spent")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "epsilon.png", dpi=120)
    out.append(run_dir / "epsilon.png")
    plt.close(fig)
    return out
