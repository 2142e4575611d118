"""The privacy report of a trained model: JSON for machines and Markdown for a privacy officer, beside the model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedhaven.server.recorder import CentralNoise, RoundRecord, SiteReport, finite_or_none, write_atomic
from fedhaven.shared.accounting import PrivacyHistory, epsilon
from fedhaven.shared.schema import RunConfig

RECOMPUTE_LEDGER = "fl-client ledger verify --config site.toml"
RECOMPUTE_ROW = ("python -c \"from opacus.accountants import RDPAccountant as A; a = A(); "
                 "a.history = [(NOISE, RATE, STEPS)]; print(a.get_epsilon(DELTA))\"")


def central_history(*, noise: Sequence[CentralNoise], rounds: list[RoundRecord]) -> PrivacyHistory:
    """Client-level accounting: one Gaussian step per round, site sampling rate = sites asked / sites available.

    Flower samples a fixed number of sites per round; accounting it as Poisson
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
        lines = ["# Privacy report", "", f"Model: `{d['model']}`, {d['rounds_completed']} round(s) completed."]
        if d.get("stopped"):
            lines += ["", f"**The run ended early:** {d['stopped']}"]
        lines.append("")
        dp = d["local_dp"]
        if dp["enabled"]:
            lines += ["## Local differential privacy (record level, each site)", "",
                      f"DP-SGD (Opacus) with Poisson sampling, per-example clipping to L2 norm {dp['max_grad_norm']:g}, "
                      f"Gaussian noise; {dp['accountant']} accountant; delta {dp['delta']:g}. A site's epsilon "
                      "covers everything it ever trained, all runs included (its ledger is the record).", "",
                      "| site | epsilon | noise multiplier | sample rate | steps | examples |",
                      "|---|---|---|---|---|---|"]
            for name, s in d["sites"].items():
                eps = "inf" if s["epsilon"] is None else f"{s['epsilon']:.4f}"
                lines.append(f"| {name} | {eps} | {s['noise_multiplier']:.4f} | {s['sample_rate']:.5f} | "
                             f"{s['steps']} | {s['num_examples']} |")
            lines += ["", "Each site recomputes its epsilon from its own ledger, without trusting the coordinator:",
                      "", f"    {RECOMPUTE_LEDGER}", "", "or from a row above (steps of this run):", "",
                      f"    {RECOMPUTE_ROW}", ""]
        else:
            lines += ["## Local differential privacy: OFF", "", "Site updates carry no record-level guarantee.", ""]
        c = d["central_dp"]
        if c["enabled"]:
            lines += ["## Central differential privacy (client level, on the aggregate)", "",
                      f"Each site clips its update to L2 norm {c['clipping']} before SecAgg+ masks it; the "
                      f"coordinator adds Gaussian noise of std z*C/m (z = {c['noise_multiplier']:g}) to the mean of "
                      f"the m updates. {c['rounds']} noised round(s), site sampling rate {c['sample_rates']}; "
                      f"{c['accountant']} accountant.", "",
                      f"**epsilon = {_fmt(c['epsilon'])} at delta {c['delta']:g}** for any one site's participation.",
                      ""]
        sa = d["secure_aggregation"]
        lines += ["## Secure aggregation", ""]
        lines += ([f"SecAgg+ (Flower): the coordinator only unmasked sums; shares {sa['num_shares']}, "
                   f"reconstruction threshold {sa['reconstruction_threshold']}, max weight {sa['max_weight']}."]
                  if sa["enabled"] else ["OFF: the coordinator saw each site's update in the clear."])
        if d.get("site_failures"):
            lines += ["", "## Sites that did not contribute", "",
                      *[f"- round {r['round']}: {r['reason']}" for r in d["site_failures"]]]
        audit = d.get("membership_inference")
        lines += ["", "## Empirical check", ""]
        lines += ([f"Loss-threshold membership inference on the final model: AUC {audit['auc']:.3f} "
                   f"({audit['members']} training vs {audit['non_members']} held-out examples; 0.5 is chance)."]
                  if audit else ["Not computed here: it needs the sites' training data (fl-sim computes it)."])
        lines += ["", "Not covered by epsilon: each site's number of examples and the training loss/accuracy it "
                  "reported per round.", ""]
        return "\n".join(lines)

    def write(self, run_dir: Path) -> tuple[Path, Path]:
        j, m = run_dir / "privacy.json", run_dir / "privacy.md"
        write_atomic(j, json.dumps(self.data, indent=2).encode())
        write_atomic(m, self.markdown().encode())
        return j, m


def _fmt(x: float | None) -> str:
    return "inf" if x is None else f"{x:.4f}"


def build_privacy_report(*, run: RunConfig, sites: dict[str, SiteReport], rounds: list[RoundRecord],
                         max_weight: float | None, central: Sequence[CentralNoise] = (),
                         stopped: str | None = None, membership_inference: dict | None = None) -> PrivacyReport:
    c = run.central_dp
    hist = central_history(noise=central, rounds=rounds)
    central_eps = finite_or_none(epsilon(history=hist, delta=c.delta, accountant=c.accountant)) if c.enabled else None
    failures = [{"round": r.round, "reason": f} for r in rounds for f in r.failures]
    data = {
        "model": run.model.name,
        "rounds_completed": sum(r.status == "ok" for r in rounds),
        "stopped": stopped,
        "local_dp": {"enabled": run.dp.enabled, "delta": run.dp.delta, "accountant": run.dp.accountant,
                     "max_grad_norm": run.dp.max_grad_norm, "target_epsilon": run.dp.target_epsilon,
                     "mechanism": "DP-SGD (Opacus), Poisson sampling, Gaussian noise"},
        "central_dp": {"enabled": c.enabled, "clipping": c.clipping if c.enabled else None,
                       "noise_multiplier": c.noise_multiplier, "delta": c.delta, "accountant": c.accountant,
                       "rounds": len(central), "epsilon": central_eps,
                       "clipping_norms": [n.clipping_norm for n in central],
                       "noise_std": [n.noise_std for n in central],
                       "sites_per_round": [n.sites for n in central],
                       "sample_rates": sorted({s.sample_rate for s in hist.steps})},
        "secure_aggregation": {"enabled": run.secagg.enabled, "protocol": "SecAgg+ (Flower)",
                               "num_shares": run.secagg.num_shares,
                               "reconstruction_threshold": run.secagg.reconstruction_threshold,
                               "max_weight": max_weight},
        "sites": {name: {"epsilon": finite_or_none(r.epsilon), "delta": r.delta,
                         "noise_multiplier": r.noise_multiplier, "sample_rate": r.sample_rate,
                         "steps": r.total_steps, "num_examples": r.num_examples}
                  for name, r in sorted(sites.items())},
        "epsilon_max": max((finite_or_none(r.epsilon) or 0.0 for r in sites.values()), default=None)
        if run.dp.enabled else None,
        "site_failures": failures,
        "membership_inference": membership_inference,
        "recompute": {"from_ledger": RECOMPUTE_LEDGER, "from_row": RECOMPUTE_ROW},
    }
    return PrivacyReport(data)
