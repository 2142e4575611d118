"""The privacy report of a trained model: JSON for machines and Markdown for a privacy officer, beside the model."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhaven.server.records import CentralNoise, RoundRecord, SiteReport, finite_or_none
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.files import write_atomic
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.text import markdown

RECOMPUTE_LEDGER = "fl-client ledger verify --config site.toml"
RECOMPUTE_ROW = ("python -c \"from opacus.accountants import RDPAccountant as A; a = A(); "
                 "a.history = [(NOISE, RATE, STEPS), ...]; print(a.get_epsilon(DELTA))\"")
NOT_PRIVATE = "∞ (not private)"


def worst_epsilon(values: Iterable[float]) -> float | None:
    """The one rule for a maximum epsilon: infinite as soon as any is (no noise), None when there is none."""
    vals = list(values)
    if not vals:
        return None
    return math.inf if any(not math.isfinite(v) for v in vals) else max(vals)


def format_epsilon(x: float | None) -> str:
    """An epsilon for people: a number, or "∞ (not private)"; never a zero standing for "no guarantee"."""
    return NOT_PRIVATE if x is None or not math.isfinite(x) else f"{x:.4f}"


def central_history(*, noise: Sequence[CentralNoise], rounds: list[RoundRecord]) -> PrivacyHistory:
    """Client-level accounting: one Gaussian step per round, site sampling rate = sites asked / sites available.

    The noise is the mechanism's configured multiplier (`CentralNoise.noise_multiplier`): under
    adaptive clipping the update and the clipped-count queries together are a Gaussian mechanism
    with that multiplier (Andrew et al. 2021, Theorem 1), so the update's larger share is never
    accounted. Flower samples a fixed number of sites per round; accounting it as Poisson
    sampling with that rate is the usual approximation (exact when every site is asked).
    """
    asked = {r.round: (r.sites_ok + r.sites_failed, r.sites_available) for r in rounds if r.status == "ok"}
    h = PrivacyHistory()
    for n in noise:
        sampled, available = asked.get(n.server_round, (n.sites, n.sites))
        h = h.add(noise_multiplier=n.noise_multiplier, sample_rate=min(1.0, sampled / max(available, sampled, 1)),
                  steps=1)
    return h


@dataclass(frozen=True)
class PrivacyReport:
    """What was guaranteed to whom: per-site (epsilon, delta) with the mechanism parameters behind it."""

    data: dict[str, Any]

    def markdown(self) -> str:
        d = self.data
        lines = ["# Privacy report", "", f"Model: `{d['model']}`, {d['rounds_completed']} round(s) completed "
                 f"(outcome: {d['outcome']})."]
        if d.get("stopped"):
            lines += ["", f"**The run ended early:** {d['stopped']}"]
        if not d["private"]:
            lines += ["", "**NOT PRIVATE:** " + ("local differential privacy was off" if not d["local_dp"]["enabled"]
                                                  else "a site trained without noise") +
                      ": epsilon is infinite (∞); no record-level guarantee holds for this model."]
        lines.append("")
        dp = d["local_dp"]
        if dp["enabled"]:
            lines += ["## Local differential privacy (record level, each site)", "",
                      "DP-SGD (Opacus) with Poisson sampling, per-example clipping to L2 norm "
                      f"{dp['max_grad_norm']:g}, Gaussian noise; {dp['accountant']} accountant; delta "
                      f"{dp['delta']:g}; the run's target {dp['target_epsilon']:g}, which every site enforces "
                      "before each round. A site's epsilon covers "
                      f"everything it trained in its current budget, all runs and every attempt included, also "
                      f"attempts that produced no aggregate (its ledger is the record).", "",
                      f"Maximum over sites: **epsilon {format_epsilon(d['epsilon_max'])}** at delta {dp['delta']:g}.",
                      "", "| site | epsilon | noise multiplier | sample rate | steps | examples |",
                      "|---|---|---|---|---|---|"]
            for name, s in d["sites"].items():
                eps = format_epsilon(s["epsilon"])
                if s.get("bounded"):
                    eps = f"<= {eps} (bound: a training reply was lost)"
                cells = [_cell(s["noise_multiplier"], "{:.4f}"), _cell(s["sample_rate"], "{:.5f}"),
                         _cell(s["steps"], "{}"), _cell(s["num_examples"], "{}")]
                lines.append(f"| {markdown(name)} | {eps} | " + " | ".join(cells) + " |")
            lines += ["", "Each site recomputes its epsilon from its own ledger, without trusting the coordinator:",
                      "", f"    {d['recompute']['from_ledger']}", "",
                      "or anyone from a site's `history` rows in privacy.json (every round it trained in this run, "
                      "retried attempts included; complete when `history_complete`):", "",
                      f"    {RECOMPUTE_ROW}", ""]
        else:
            lines += ["## Local differential privacy: OFF", "", "Site updates carry no record-level guarantee "
                      "(epsilon ∞).", ""]
        c = d["central_dp"]
        if c["enabled"]:
            split = (f" Adaptive clipping (Andrew et al.): of the total z, the update gets z = "
                     f"{c['value_noise_multipliers'][-1]:.4f} and the clipped-site count noise of std "
                     f"{c['count_noise_std']:g}; the accountant uses the total z."
                     if c["clipping"] == "adaptive" and c["value_noise_multipliers"] else "")
            lines += ["## Central differential privacy (client level, on the aggregate)", "",
                      f"Each site clips its update ({c['clipping']} clipping, L2 norms "
                      f"{', '.join(f'{x:.4g}' for x in c['clipping_norms']) or 'none'}) before SecAgg+ masks it; the "
                      f"coordinator adds Gaussian noise of std z*C/m (configured z = {c['noise_multiplier']:g}) to the "
                      f"mean of the m updates.{split} {c['rounds']} noised round(s), site sampling rate "
                      f"{c['sample_rates']}; "
                      f"{c['accountant']} accountant.", "",
                      f"**epsilon = {format_epsilon(c['epsilon'])} at delta {c['delta']:g}** for any one site's "
                      f"participation.", ""]
        sa = d["secure_aggregation"]
        lines += ["## Secure aggregation", ""]
        lines += ([f"SecAgg+ (Flower): the coordinator only unmasked sums of model arrays; shares {sa['num_shares']}, "
                   f"reconstruction threshold {sa['reconstruction_threshold']}, max weight {sa['max_weight']}. "
                   f"In the clear with each update: {', '.join(sa['clear_text'])}."]
                  if sa["enabled"] else ["OFF: the coordinator saw each site's update in the clear."])
        if d.get("attempts_without_aggregate"):
            lines += ["", "## Attempts that produced no aggregate (their spending is counted above)", "",
                      *[f"- round {a['round']} attempt {a['attempt']}: {a['sites_trained']} site(s) trained"
                        + (f"; no reply from {', '.join(map(markdown, a['unanswered']))} (bounded)"
                           if a["unanswered"] else "")
                        for a in d["attempts_without_aggregate"]]]
        if d.get("rounds_rejected"):
            lines += ["", "## Rounds rejected by the [robust] guard (the previous model kept; their spending is "
                      "counted above)", "",
                      *[f"- round {r['round']}: {markdown(r['reason'])}" for r in d["rounds_rejected"]]]
        if d.get("located"):
            lines += ["", "## Searches for a bad site inside a masked sum ([robust] locate)", "",
                      "Each search re-masked the updates the sites had already sent (no training, no new spend) for "
                      f"subgroups; the coordinator learned only those subgroups' sums (groups of at least "
                      f"{d['located'][0]['min_group']} sites), planned so that no linear combination of the round's "
                      f"sums is non-zero on fewer than {d['located'][0]['min_group']} honest sites.", "",
                      *[f"- round {r['round']}: {markdown(r['note'] or '')}"
                        + (f" Left out of the rest of the run: {', '.join(map(markdown, r['sites']))}."
                           if r["sites"] else "") + f" ({r['groups']} group(s), {r['seconds']:.1f} s)"
                        for r in d["located"]]]
        if d.get("site_failures"):
            lines += ["", "## Sites that did not contribute", "",
                      *[f"- round {r['round']}: {markdown(r['reason'])}" for r in d["site_failures"]]]
        audit = d.get("membership_inference")
        lines += ["", "## Empirical check", ""]
        lines += ([f"Loss-threshold membership inference on the final model: AUC {audit['auc']:.3f} "
                   f"({audit['members']} training vs {audit['non_members']} held-out examples; 0.5 is chance)."]
                  if audit else ["Not computed here: it needs the sites' training data (fl-sim computes it)."])
        lines += ["", "Not covered by epsilon: each site's number of examples, the training loss/accuracy it "
                  "reported per round (only where its policy.send_training_metrics is true), and its ledger position.",
                  ""]
        return "\n".join(lines)

    def write(self, run_dir: Path) -> tuple[Path, Path]:
        j, m = run_dir / "privacy.json", run_dir / "privacy.md"
        write_atomic(j, json.dumps(self.data, indent=2).encode())
        write_atomic(m, self.markdown().encode())
        return j, m


def _cell(value: object, fmt: str) -> str:
    return "?" if value is None else fmt.format(value)


#: What travels in the clear with each training reply, also under SecAgg+ (Flower's mod masks arrays only).
CLEAR_TEXT = ("site name", "example count (the update's weight)", "training loss and accuracy (only where the site's "
              "policy.send_training_metrics is true)", "epsilon, delta, noise multiplier, sample rate, steps",
              "ledger position (seq and previous hash)", "under adaptive central DP: whether the update was clipped")


def build_privacy_report(*, run: RunConfig, sites: dict[str, SiteReport], rounds: list[RoundRecord],
                         max_weight: float | None, central: Sequence[CentralNoise] = (),
                         stopped: str | None = None, membership_inference: dict[str, Any] | None = None,
                         epsilons: Mapping[str, float] | None = None, outcome: str = "completed",
                         ledger_command: str | None = None,
                         histories: Mapping[str, Sequence[tuple[float, float, int]]] | None = None) -> PrivacyReport:
    """The report of a run, for simulation and deployment alike.

    `epsilons` is each site's epsilon as the coordinator states it (`RunRecorder.epsilons`: bounded
    by the run's target where a training reply was lost); by default what the sites reported.
    Infinite epsilons (no noise, DP off) are written as null with `"private": false`. `histories` is
    every (noise, sample rate, steps) each site reported in this run, in order: with
    `history_complete` (nothing trained before this run), a fresh accountant over it gives the epsilon.
    """
    c = run.central_dp
    hist = central_history(noise=central, rounds=rounds)
    central_raw = epsilon(history=hist, delta=c.delta, accountant=c.accountant) if c.enabled else None
    eps = dict(epsilons) if epsilons is not None else {n: r.epsilon for n, r in sites.items()}
    worst = worst_epsilon(eps.values())
    private = run.dp.enabled and (worst is None or math.isfinite(worst))
    failures = [{"round": r.round, "reason": f} for r in rounds for f in r.failures]
    site_rows: dict[str, dict[str, Any]] = {}
    for name in sorted(eps):
        r = sites.get(name)
        site_rows[name] = {"epsilon": finite_or_none(eps[name]), "private": math.isfinite(eps[name]),
                           "bounded": r is None or eps[name] != r.epsilon,
                           "epsilon_reported": finite_or_none(r.epsilon) if r is not None else None,
                           "delta": r.delta if r is not None else run.dp.delta,
                           "noise_multiplier": r.noise_multiplier if r is not None else None,
                           "sample_rate": r.sample_rate if r is not None else None,
                           "steps": r.total_steps if r is not None else None,
                           "num_examples": r.num_examples if r is not None else None,
                           "history": [list(h) for h in (histories or {}).get(name, [])]}
        seen = sum(h[2] for h in site_rows[name]["history"])
        site_rows[name]["history_complete"] = r is not None and histories is not None and seen == r.total_steps
    data = {
        "model": run.model.name,
        "outcome": outcome,
        # a round redone after a resume counts once
        "rounds_completed": len({r.round for r in rounds if r.status == "ok"}),
        "stopped": stopped,
        "private": private,
        "epsilon_max": finite_or_none(worst) if run.dp.enabled else None,
        "local_dp": {"enabled": run.dp.enabled, "delta": run.dp.delta, "accountant": run.dp.accountant,
                     "max_grad_norm": run.dp.max_grad_norm, "target_epsilon": run.dp.target_epsilon,
                     "noise_multiplier": run.dp.noise_multiplier, "allow_not_private": run.dp.allow_not_private,
                     "mechanism": "DP-SGD (Opacus), Poisson sampling, Gaussian noise"},
        "central_dp": {"enabled": c.enabled, "clipping": c.clipping if c.enabled else None,
                       "noise_multiplier": c.noise_multiplier, "delta": c.delta, "accountant": c.accountant,
                       "rounds": len(central), "epsilon": finite_or_none(central_raw),
                       "private": (central_raw is not None and math.isfinite(central_raw)) if c.enabled else None,
                       "accounted_noise_multipliers": [n.noise_multiplier for n in central],
                       "value_noise_multipliers": [n.value_noise_multiplier or n.noise_multiplier for n in central],
                       "count_noise_std": central[-1].count_noise_std if central else None,
                       "clipping_norms": [n.clipping_norm for n in central],
                       "noise_std": [n.noise_std for n in central],
                       "sites_per_round": [n.sites for n in central],
                       "sample_rates": sorted({s.sample_rate for s in hist.steps})},
        "secure_aggregation": {"enabled": run.secagg.enabled, "protocol": "SecAgg+ (Flower)",
                               "num_shares": run.secagg.num_shares,
                               "reconstruction_threshold": run.secagg.reconstruction_threshold,
                               "max_weight": max_weight, "clear_text": list(CLEAR_TEXT)},
        "sites": site_rows,
        "attempts_without_aggregate": [{"round": r.round, "attempt": r.attempt, "sites_trained": r.sites_ok,
                                        "unanswered": list(r.unanswered)}
                                       for r in rounds if r.status == "failed"],
        "rounds_rejected": [{"round": r.round, "reason": r.rejected, "sites_trained": r.sites_ok,
                             "update_norm": r.update_norm, "update_bound": r.update_bound}
                            for r in rounds if r.status == "rejected"],
        "site_failures": failures,
        "located": [{"round": r.round, "sites": list(r.located), "groups": r.locate_groups,
                     "seconds": r.locate_time_s, "note": r.locate_note, "min_group": run.robust.locate_min_group}
                    for r in rounds if r.locate_groups or r.locate_note],
        "membership_inference": membership_inference,
        "recompute": {"from_ledger": ledger_command or RECOMPUTE_LEDGER, "from_row": RECOMPUTE_ROW},
    }
    return PrivacyReport(data)
