"""The privacy report of a trained model: JSON for machines and Markdown for a privacy officer, beside the model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhaven.server.recorder import SiteReport, finite_or_none, write_atomic
from fedhaven.shared.schema import RunConfig

RECOMPUTE = ("python -c \"from opacus.accountants import RDPAccountant as A; a = A(); "
             "a.history = [(NOISE, RATE, STEPS)]; print(a.get_epsilon(DELTA))\"")


@dataclass(frozen=True)
class PrivacyReport:
    """What was guaranteed to whom: per-site (epsilon, delta) with the mechanism parameters behind it."""

    data: dict[str, Any]

    def markdown(self) -> str:
        d = self.data
        lines = ["# Privacy report", "", f"Model: `{d['model']}`, {d['rounds_completed']} round(s).", ""]
        if d["local_dp"]["enabled"]:
            dp = d["local_dp"]
            lines += ["## Local differential privacy (each site)", "",
                      f"DP-SGD with Poisson sampling, per-example clipping to L2 norm {dp['max_grad_norm']:g}, "
                      f"Gaussian noise; accountant: {dp['accountant']}; delta {dp['delta']:g}. "
                      "Each site's epsilon covers everything it ever trained, not just this run.", "",
                      "| site | epsilon | noise multiplier | sample rate | steps | examples |",
                      "|---|---|---|---|---|---|"]
            for name, s in d["sites"].items():
                eps = "inf" if s["epsilon"] is None else f"{s['epsilon']:.4f}"
                lines.append(f"| {name} | {eps} | {s['noise_multiplier']:.4f} | {s['sample_rate']:.5f} | "
                             f"{s['steps']} | {s['num_examples']} |")
            lines += ["", "Recompute a site's epsilon from its row (this run's history; a site's own ledger "
                      "holds all of it):", "", f"    {RECOMPUTE}", ""]
        else:
            lines += ["## Local differential privacy: OFF", "", "Site updates carry no formal privacy guarantee.",
                      ""]
        sa = d["secure_aggregation"]
        lines += ["## Secure aggregation", ""]
        lines += ([f"SecAgg+ (Flower): the coordinator only unmasked sums; shares {sa['num_shares']}, "
                   f"reconstruction threshold {sa['reconstruction_threshold']}, max weight {sa['max_weight']}."]
                  if sa["enabled"] else ["OFF: the coordinator saw each site's update in the clear."])
        lines += ["", "Not covered by epsilon: each site's number of examples and the training loss/accuracy it "
                  "reported per round.", ""]
        return "\n".join(lines)

    def write(self, run_dir: Path) -> tuple[Path, Path]:
        j, m = run_dir / "privacy.json", run_dir / "privacy.md"
        write_atomic(j, json.dumps(self.data, indent=2).encode())
        write_atomic(m, self.markdown().encode())
        return j, m


def build_privacy_report(*, run: RunConfig, sites: dict[str, SiteReport], rounds_completed: int,
                         max_weight: float | None) -> PrivacyReport:
    data = {
        "model": run.model.name,
        "rounds_completed": rounds_completed,
        "local_dp": {"enabled": run.dp.enabled, "delta": run.dp.delta, "accountant": run.dp.accountant,
                     "max_grad_norm": run.dp.max_grad_norm, "target_epsilon": run.dp.target_epsilon,
                     "mechanism": "DP-SGD (Opacus), Poisson sampling, Gaussian noise"},
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
    }
    return PrivacyReport(data)
