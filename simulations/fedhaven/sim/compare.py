"""`fl-sim compare RUN_DIR...`: runs side by side (a table) and together (one plot of accuracy and epsilon)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhaven.server.records import RoundRecord, finite_or_none, read_rounds
from fedhaven.shared.files import read_json_object

HELP = "print finished runs side by side and plot their accuracy and epsilon per round together"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directories (fl-sim's, or a coordinator's runs/run-ID)")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="the plot (default: ./compare.png)")
    p.add_argument("--json", action="store_true", help="print the table as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true")


@dataclass(frozen=True)
class RunView:
    """What the comparison shows of one run: its headline and its rounds."""

    name: str
    run_dir: Path
    headline: dict[str, Any]
    rounds: list[RoundRecord]


def load_run(run_dir: Path) -> RunView:
    """A run directory's metrics.jsonl and what its summary.json (simulation) or privacy.json says of it."""
    if not (run_dir / "metrics.jsonl").exists():
        raise ValueError(f"{run_dir}: not a fedhaven run directory (no metrics.jsonl)")
    rounds = read_rounds(run_dir)
    ok = [r for r in rounds if r.status == "ok"]
    summary = read_json_object(run_dir / "summary.json")
    privacy = read_json_object(run_dir / "privacy.json")
    settings = read_json_object(run_dir / "experiment.json") or read_json_object(run_dir / "config.json")
    dp = settings.get("dp", {})
    head = {
        "sites": summary.get("sites", len({s for r in rounds for s in r.epsilons}) or None),
        "partition": summary.get("partition", settings.get("partition")),
        "rounds": len({r.round for r in ok}),
        "final_accuracy": ok[-1].accuracy if ok else None,
        "best_accuracy": max((r.accuracy for r in ok if r.accuracy is not None), default=None),
        "final_loss": ok[-1].loss if ok else None,
        "epsilon_max": privacy.get("epsilon_max", finite_or_none(ok[-1].epsilon_max) if ok else None),
        "delta": dp.get("delta") if dp.get("enabled", True) else None,
        "dp": dp.get("enabled", True),
        "secure_aggregation": settings.get("secagg", {}).get("enabled", ok[-1].secure_aggregation if ok else None),
        "strategy": settings.get("strategy", {}).get("name"),
        "rounds_rejected": sum(r.status == "rejected" for r in rounds),
        "mean_round_time_s": (sum(r.round_time_s for r in ok) / len(ok)) if ok else None,
        "outcome": privacy.get("outcome"),
    }
    return RunView(name=str(summary.get("experiment") or run_dir.name), run_dir=run_dir, headline=head,
                   rounds=rounds)



#: Table rows: (label, headline key, format).
ROWS = (("sites", "sites", "{}"), ("partition", "partition", "{}"), ("strategy", "strategy", "{}"),
        ("rounds", "rounds", "{}"), ("test accuracy", "final_accuracy", "pct"),
        ("best accuracy", "best_accuracy", "pct"),
        ("test loss", "final_loss", "{:.4f}"), ("epsilon max", "epsilon_max", "{:.3f}"), ("delta", "delta", "{:g}"),
        ("secure agg.", "secure_aggregation", "bool"), ("rejected rounds", "rounds_rejected", "{}"),
        ("s per round", "mean_round_time_s", "{:.1f}"), ("outcome", "outcome", "{}"))


def _cell(value: Any, fmt: str, head: dict[str, Any], key: str) -> str:
    if key == "epsilon_max" and value is None and head.get("rounds"):
        return "∞ (DP off)" if not head.get("dp") else "∞"
    if value is None:
        return "-"
    if fmt == "pct":
        return f"{100 * value:.2f}%"
    if fmt == "bool":
        return "SecAgg+" if value else "OFF"
    return fmt.format(value)


def table(views: list[RunView]) -> str:
    """The runs as columns, one row per headline figure, then test accuracy per round."""
    names = [v.name if len(v.name) <= 28 else v.name[:27] + "…" for v in views]
    rows: list[list[str]] = [["", *names], ["run directory", *(v.run_dir.name for v in views)]]
    rows += [[label, *(_cell(v.headline.get(key), fmt, v.headline, key) for v in views)] for label, key, fmt in ROWS]
    per_round = [{r.round: r.accuracy for r in v.rounds if r.status in ("ok", "initial")} for v in views]
    for n in sorted({k for acc in per_round for k in acc}):
        rows.append([f"accuracy round {n}", *(_cell(acc.get(n), "pct", {}, "") for acc in per_round)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def plot(views: list[RunView], out: Path) -> Path:
    """Accuracy and max epsilon per round, one line per run, side by side in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, eps_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for v in views:
        ok = [r for r in v.rounds if r.status in ("ok", "initial")]
        acc_ax.plot([r.round for r in ok], [100 * r.accuracy if r.accuracy is not None else math.nan for r in ok],
                    "o-", ms=3, label=v.name)
        done = [r for r in ok if r.round > 0]
        eps_ax.plot([r.round for r in done], [finite_or_none(r.epsilon_max) or math.nan for r in done], "o-", ms=3,
                    label=v.name)
    acc_ax.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy")
    eps_ax.set(xlabel="round", ylabel="epsilon (max over sites, cumulative)", title="privacy spent")
    for ax in (acc_ax, eps_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    problems, views = [], []
    for d in args.runs:
        try:
            views.append(load_run(Path(d)))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        print("fl-sim compare: " + "; ".join(problems), file=sys.stderr)
        return 2
    path = plot(views, args.out)
    if args.json:
        print(json.dumps({"runs": [{"name": v.name, "run_dir": str(v.run_dir), **v.headline} for v in views],
                          "plot": str(path)}, indent=2))
    else:
        print(table(views))
        print(f"\nplot: {path}")
    return 0
