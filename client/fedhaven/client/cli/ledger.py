"""`fl-client ledger show|verify`: what left this site and what it cost, and proof the record is intact."""

from __future__ import annotations

import argparse
import datetime
import logging
from pathlib import Path

from fedhaven.client.ledger import Ledger
from fedhaven.client.policy import budget_spent
from fedhaven.client.site_config import load_site_config

log = logging.getLogger("fedhaven.client")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "verify"))
    p.add_argument("--config", type=Path, default=Path("site.toml"), help="the site's configuration file")


def run(args: argparse.Namespace) -> int:
    cfg = load_site_config(args.config)
    ledger = Ledger.in_dir(cfg.state_dir)
    if args.action == "verify":
        report = ledger.verify()
        if not report.ok:
            for p in report.problems:
                log.error("%s", p)
            log.error("ledger %s does NOT verify (%d entries checked)", ledger.path, report.entries)
            return 1
        spent = budget_spent(policy=cfg.policy, history=ledger.history())
        log.info("ledger %s verified: %d entries, chain intact, every epsilon recomputed; head %s", ledger.path,
                 report.entries, ledger.head()[:16])
        log.info("epsilon spent across all runs: %.4f at delta %g (budget %g), recomputed from the ledger with a "
                 "fresh %s accountant", spent, cfg.policy.delta, cfg.policy.max_epsilon, cfg.policy.accountant)
        return 0
    entries = ledger.entries()
    log.info("%-4s %-19s %-8s %-5s %-8s %-9s %-8s %-6s %-9s %s", "seq", "time (UTC)", "run", "round", "model",
             "noise", "rate", "steps", "eps run", "eps total")
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        fmt = (lambda x: "inf" if x is None else f"{x:.4f}")
        log.info("%-4d %-19s %-8s %-5d %-8s %-9.4f %-8.5f %-6d %-9s %s", e.seq, when, str(e.run_id)[-8:],
                 e.server_round, e.model, e.noise_multiplier, e.sample_rate, e.steps, fmt(e.epsilon_after),
                 fmt(e.cumulative_epsilon))
    spent = budget_spent(policy=cfg.policy, history=ledger.history())
    log.info("%d updates left this site; epsilon %.4f of %g spent (delta %g)", len(entries), spent,
             cfg.policy.max_epsilon, cfg.policy.delta)
    return 0
