"""accuracy.png and epsilon.png of a run, drawn by the coordinator for every run (simulated or deployed)."""

from __future__ import annotations

import math
from pathlib import Path

from fedhaven.server.records import RoundRecord, finite_or_none


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
