"""A run's accuracy and epsilon per round as SVG, drawn on the server with matplotlib (nothing is fetched by the
browser: the operator's machine may have no internet)."""

from __future__ import annotations

import io
import math

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedhaven.server.console.view import RunView

CHARTS = ("accuracy", "epsilon")


def chart_svg(*, run: RunView, which: str) -> bytes:
    """`accuracy` (held-out test set, after each aggregated round) or `epsilon` (each site's cumulative epsilon,
    as the site reported it, per round): an SVG document."""
    if which not in CHARTS:
        raise ValueError(f"unknown chart {which!r}; expected one of {', '.join(CHARTS)}")
    # matplotlib's object API, not pyplot: no global state, safe in the server's worker threads
    fig = Figure(figsize=(5.2, 2.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("round")
    if which == "accuracy":
        points = [(r.round, r.accuracy) for r in run.rounds if r.status in ("ok", "initial") and r.accuracy is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#1f77b4")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
    else:
        sites = sorted({s for r in run.rounds for s in r.epsilons})
        for site in sites:
            pts = [(r.round, float(eps)) for r in run.rounds
                   if (eps := r.epsilons.get(site)) is not None and math.isfinite(eps)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=site)
        if run.target_epsilon is not None:
            ax.axhline(run.target_epsilon, color="#d62728", linestyle="--", label="run's target")
        ax.set_ylabel("epsilon (cumulative)")
        if sites:
            ax.legend(fontsize="small")
        ax.set_ylim(bottom=0)
    last = max([run.planned, *(r.round for r in run.rounds)], default=1)
    ax.set_xlim(-0.2, max(1, last) + 0.2)  # the whole run's rounds, so that progress shows
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    out = io.BytesIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()
