"""`fl-client ledger show|verify|init|reset`: what left this site and what it cost, proof the record is intact,
and the only two ways a budget starts from zero (a new site; an operator's reset with a reason).

The ledger is found from site.toml (`--config`), or directly (`--state-dir DIR` or `--ledger FILE`, e.g. a
simulated site's `runs/<run>/sites/<site>`); its anchor is the configured one, `--anchor FILE`, or the
default beside the state directory. Signatures are checked against the site's key: the one site.toml's
`private_key` names (or site.pub beside it), or `--public-key FILE` (an auditor's copy, e.g. the key the
coordinator registered for the site).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
from pathlib import Path
from typing import Any

from fedhaven.client.cli import SITE_CONFIG_ENV, default_config
from fedhaven.client.ledger import SPENDS, Ledger, LedgerEntry, LedgerError, VerifyReport
from fedhaven.client.ledger_signing import SiteKey, site_key
from fedhaven.client.site_config import SitePolicy, load_site_config
from fedhaven.shared.accounting import epsilon
from fedhaven.shared.exitcodes import ExitCode
from fedhaven.shared.witness import Witness

log = logging.getLogger("fedhaven.client")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "verify", "init", "reset"),
                   help="show: every entry; verify: chain, anchor and every epsilon; init: start a new site's ledger; "
                        "reset: record a loss or start a fresh budget (appended, with --reason)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help=f"the site's configuration file (default: ${SITE_CONFIG_ENV}, "
                                                   "else ./site.toml)")
    where.add_argument("--state-dir", type=Path, help="a state directory holding privacy-ledger.jsonl")
    where.add_argument("--ledger", type=Path, help="a ledger file")
    p.add_argument("--anchor", type=Path, help="the ledger's anchor file (default: from site.toml, or beside the "
                                               "state directory)")
    p.add_argument("--public-key", type=Path,
                   help="verify: the site's public key (OpenSSH, e.g. its site.pub as the coordinator registered it) "
                        "to check the entries' signatures against (default: the key site.toml names)")
    p.add_argument("--site", help="init/reset without site.toml: the site's name")
    p.add_argument("--reason", default="", help="init/reset: why, kept in the ledger for auditors")
    p.add_argument("--keep-budget", action="store_true",
                   help="reset: re-anchor the ledger as it is, still counting everything spent (no fresh budget)")
    p.add_argument("--accept-witness", metavar="SEQ:HASH",
                   help="reset: record the coordinator's witness of an update this ledger lost or holds differently "
                        "(SEQ:HASH exactly as the refusal printed it)")
    p.add_argument("--json", action="store_true",
                   help="show/verify: print one JSON document on stdout (errors too, with a code)")


def _ledger(args: argparse.Namespace) -> tuple[Ledger, SitePolicy | None, str | None]:
    """(the ledger, the site's policy when site.toml was given, the site's name when known)."""
    if args.state_dir is not None:
        return Ledger.in_dir(args.state_dir.expanduser().resolve(), anchor=args.anchor), None, args.site
    if args.ledger is not None:
        return Ledger(args.ledger.expanduser().resolve(), anchor=args.anchor), None, args.site
    cfg = load_site_config(args.config or default_config())
    ledger = cfg.ledger()
    if args.anchor is not None:
        ledger = Ledger(ledger.path, anchor=args.anchor, signing_key=ledger.signing_key)
    return ledger, cfg.policy, cfg.name


def _site_key(args: argparse.Namespace, ledger: Ledger) -> SiteKey | None:
    """The site's public key to check signatures against: --public-key, else the site key site.toml names."""
    if getattr(args, "public_key", None) is not None:
        return site_key(public=args.public_key.expanduser())
    return ledger.site_key()


def _budget(entries: list[LedgerEntry], policy: SitePolicy | None) -> dict[str, Any] | None:
    """The current budget's spending, recomputed from the entries with a fresh accountant (None: nothing spent);
    an infinite epsilon is None with `private` false."""
    from fedhaven.client.ledger import budget_history

    updates = [e for e in entries if e.kind == "update"]
    acc: str  # a policy's Accountant, or the string an entry holds
    if policy is not None:
        delta, acc, budget = policy.delta, policy.accountant, policy.max_epsilon
    elif updates:
        delta, acc, budget = updates[-1].delta, updates[-1].accountant, None
    else:
        return None
    eps = epsilon(history=budget_history(entries), delta=delta,
                  accountant=acc)  # type: ignore[arg-type]  # an entry's string; Opacus refuses unknown ones
    return {"epsilon": None if math.isinf(eps) else eps, "private": not math.isinf(eps), "delta": delta,
            "accountant": str(acc), "max_epsilon": budget}


def _spent(entries: list[LedgerEntry], policy: SitePolicy | None) -> str:
    b = _budget(entries, policy)
    if b is None:
        return "nothing spent yet"
    shown = "inf (NOT PRIVATE: a round trained without noise)" if b["epsilon"] is None else f"{b['epsilon']:.4f}"
    budget = f" of budget {b['max_epsilon']:g}" if b["max_epsilon"] is not None else ""
    return (f"epsilon {shown}{budget} at delta {b['delta']:g} spent in the current budget, recomputed from the "
            f"ledger with a fresh {b['accountant']} accountant")


def _name(ledger: Ledger, site: str | None) -> str:
    if site:
        return site
    try:
        entries = ledger.entries()
    except LedgerError:
        entries = []
    if entries:
        return entries[-1].site
    raise LedgerError("name the site: --site NAME (or --config site.toml)")


def run(args: argparse.Namespace) -> int:
    ledger, policy, site = _ledger(args)
    if args.action == "init":
        entry = ledger.init(site=_name(ledger, site), reason=args.reason or "new site")
        log.info("ledger %s started for site %s (anchor %s); head %s", ledger.path, entry.site, ledger.anchor_path,
                 entry.hash[:16])
        return 0
    if args.action == "reset":
        witness = None
        if args.accept_witness:
            seq, _, named = args.accept_witness.partition(":")
            if not seq.isdigit() or len(named) != 64:
                raise LedgerError(f"--accept-witness: expected SEQ:HASH as the refusal printed it, got "
                                  f"{args.accept_witness!r}")
            # the hash as the refusal printed it (the entry's own; a coordinator older than that sent the hash the
            # entry links to): recorded word for word, which is what the coordinator's witness is matched against
            witness = Witness(site=_name(ledger, site), seq=int(seq), hash=named)
        entry = ledger.reset(site=_name(ledger, site), reason=args.reason, fresh_budget=not args.keep_budget,
                             accept_witness=witness)
        log.warning("ledger %s: reset entry seq %d appended (%s): %s", ledger.path, entry.seq,
                    "budget kept" if args.keep_budget else "FRESH BUDGET from here", entry.reason)
        if entry.acknowledged:
            log.warning("recorded as accepted: %s", entry.acknowledged)
        return 0
    if args.action == "verify":
        key = _site_key(args, ledger)
        report = ledger.verify(site=key, require_signed=key is not None and key.public_openssh is not None)
        if getattr(args, "json", False):
            return _verify_json(ledger, report, policy)
        if not report.ok:
            for p in report.problems:
                log.error("%s", p)
            for n in report.notes:
                log.info("%s", n)
            log.error("ledger %s does NOT verify (%d entries checked)", ledger.path, report.entries)
            return ExitCode.FAILED
        entries = ledger.entries()
        log.info("ledger %s verified: %d entries, chain intact, anchor %s matches, every epsilon recomputed; "
                 "head %s", ledger.path, report.entries, ledger.anchor_path, ledger.head()[:16])
        for n in report.notes:
            log.info("%s", n)
        log.info("%s", _spent(entries, policy))
        resets = [e for e in entries if e.kind == "reset"]
        if resets:
            log.warning("%d reset(s) recorded; the last: seq %d, %s", len(resets), resets[-1].seq, resets[-1].reason)
        return 0
    entries = ledger.entries()
    if getattr(args, "json", False):
        return _show_json(ledger, entries, policy)
    log.info("%-4s %-6s %-19s %-8s %-5s %-8s %-9s %-8s %-6s %-9s %s", "seq", "kind", "time (UTC)", "run", "round",
             "model", "noise", "rate", "steps", "eps run", "eps total")
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.time, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        if e.kind not in SPENDS:  # init, reset: no spending of their own
            log.info("%-4d %-6s %-19s %s", e.seq, e.kind, when,
                     f"{'fresh budget' if e.starts_budget else 'budget kept'}: {e.reason}"
                     + (f" (accepted: {e.acknowledged})" if e.acknowledged else ""))
            continue

        def fmt(x: float | None) -> str:
            return "inf" if x is None else f"{x:.4f}"

        log.info("%-4d %-6s %-19s %-8s %-5d %-8s %-9.4f %-8.5f %-6d %-9s %s", e.seq, e.kind, when, str(e.run_id)[-8:],
                 e.server_round, e.model, e.noise_multiplier, e.sample_rate, e.steps, fmt(e.epsilon_after),
                 fmt(e.cumulative_epsilon))
    log.info("%d updates left this site; %s", sum(e.kind == "update" for e in entries), _spent(entries, policy))
    problems = ledger.check()
    for p in problems:
        log.error("%s", p)
    return ExitCode.FAILED if problems else ExitCode.OK


def _show_json(ledger: Ledger, entries: list[LedgerEntry], policy: SitePolicy | None) -> int:
    """`ledger show --json`: every entry as stored, the spending recomputed, the problems `check` finds."""
    from dataclasses import asdict

    from fedhaven.shared.exitcodes import print_json

    problems = ledger.check()
    code = ExitCode.FAILED if problems else ExitCode.OK
    print_json({"ok": not problems, "command": "fl-client ledger show", "exit_code": int(code),
                "ledger": str(ledger.path), "anchor": str(ledger.anchor_path),
                "updates": sum(e.kind == "update" for e in entries), "budget": _budget(entries, policy),
                "problems": problems, "entries": [asdict(e) for e in entries]})
    return int(code)


def _verify_json(ledger: Ledger, report: VerifyReport, policy: SitePolicy | None) -> int:
    """`ledger verify --json`: whether chain, anchor, signatures and every epsilon hold, and the spending."""
    from fedhaven.shared.exitcodes import print_json

    doc: dict[str, Any] = {"ok": report.ok, "command": "fl-client ledger verify",
                           "exit_code": int(ExitCode.OK if report.ok else ExitCode.FAILED),
                           "ledger": str(ledger.path), "anchor": str(ledger.anchor_path), "entries": report.entries,
                           "problems": list(report.problems), "notes": list(report.notes)}
    if report.ok:
        entries = ledger.entries()
        resets = [e for e in entries if e.kind == "reset"]
        doc.update(head=ledger.head(), budget=_budget(entries, policy), resets=len(resets),
                   last_reset={"seq": resets[-1].seq, "reason": resets[-1].reason} if resets else None)
    else:
        doc.update(error="failed", message=f"ledger {ledger.path} does NOT verify ({report.entries} entries checked)")
    print_json(doc)
    return int(doc["exit_code"])
