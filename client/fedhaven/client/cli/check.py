"""`fl-client check`: config, credentials, data, device, the privacy ledger (chain, anchor, every epsilon) and
budget, checked without connecting. A deleted, truncated, replaced or edited ledger fails it."""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhaven.client.anchor import anchor_location_problems, anchor_location_warnings
from fedhaven.client.cli import SITE_CONFIG_ENV, default_config
from fedhaven.client.policy import budget_spent
from fedhaven.client.site_config import SiteConfig, load_site_config
from fedhaven.shared.config import ConfigError
from fedhaven.shared.crypto import private_key_problems
from fedhaven.shared.runtime import resolve_device

if TYPE_CHECKING:
    from fedhaven.shared.data import ImageData
    from fedhaven.shared.footprint import Footprint

#: The models fedhaven ships, whose needs `check` states for the site's data (the default first).
BUILT_IN_MODELS = ("scatternet", "lenet")

log = logging.getLogger("fedhaven.client")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=default_config(),
                   help=f"the site's configuration file (default: ${SITE_CONFIG_ENV}, else ./site.toml)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (errors too, with a code)")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="DIR",
                   help="also write the data-quality report (quality.md, quality.json) into DIR (default: "
                        "STATE_DIR/quality); it stays at the site")


def credential_problems(cfg: SiteConfig) -> list[str]:
    out = []
    if cfg.private_key and not cfg.coordinator.insecure:
        out += private_key_problems(Path(cfg.private_key))
    if cfg.coordinator.ca_cert:
        ca = Path(cfg.coordinator.ca_cert)
        if not ca.exists():
            out.append(f"{ca}: CA certificate not found (ca.pem from the operator's bundle)")
        else:
            from cryptography import x509

            try:
                x509.load_pem_x509_certificate(ca.read_bytes())
            except ValueError as exc:
                out.append(f"{ca}: not a PEM certificate ({exc})")
    return out


def roster_problems(cfg: SiteConfig) -> list[str]:
    """Whether the roster the site pins can be read, and lists this site under its name with its own key."""
    if not cfg.roster:
        return []
    from fedhaven.client.roster import load_roster
    from fedhaven.shared.signing import SigningKey

    try:
        roster = load_roster(cfg.roster)
    except ConfigError as exc:
        return [f"roster: {p}" for p in exc.problems]
    pinned = roster.fingerprint_of(cfg.name)
    if pinned is None:
        return [f"roster: {cfg.roster} does not list this site ({cfg.name}); its neighbours' rosters must, or they "
                f"refuse to share masks with it"]
    if cfg.private_key and Path(cfg.private_key).exists():
        try:
            own = SigningKey(Path(cfg.private_key)).fingerprint
        except ValueError as exc:
            return [f"roster: {exc}"]
        if own != pinned:
            return [f"roster: {cfg.roster} lists {cfg.name} with key {pinned}, but this site's key is {own}: "
                    f"the consortium's roster must carry this site's current key"]
    return []


def state_dir_problems(state_dir: Path) -> list[str]:
    """Whether the site can keep its state (ledger, executor secret, Flower's files) in `state_dir`."""
    parent = next((p for p in [state_dir, *state_dir.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return [f"state_dir: {parent} is a file, not a folder; point state_dir at a folder this site may write"]
    if state_dir.exists():
        if not os.access(state_dir, os.W_OK | os.X_OK):
            return [f"state_dir: {state_dir} is not writable by this account"]
    elif parent is None or not os.access(parent, os.W_OK | os.X_OK):
        return [f"state_dir: {state_dir} does not exist and {parent} does not let this account create it"]
    return []


def check_site(cfg: SiteConfig) -> tuple[ImageData, list[Footprint]]:
    """Everything `fl-client start` needs, or ConfigError listing every problem; the site's data (decoded into its
    cache) and what training each of its allowed built-in models would need of this machine."""
    from fedhaven.client.deployment import site_info
    from fedhaven.shared.sources import load_data  # torch: only the commands that read data pay for it

    problems = credential_problems(cfg) + roster_problems(cfg) + state_dir_problems(Path(cfg.state_dir))
    data = None
    needs: list[Footprint] = []
    try:
        data = load_data(cfg=cfg.data, split="train", cache_dir=site_info(cfg, roster=False).cache())
        if len(data) == 0:
            problems.append(f"data: no training images found under {cfg.data.path}")
        else:
            needs, more = resource_needs(cfg, data)
            problems += more
    except (ValueError, OSError) as exc:
        problems.append(f"data: {exc}")
    ledger = cfg.ledger()
    report = ledger.verify()
    problems += [f"ledger: {p}" for p in report.problems]
    for w in anchor_location_warnings(anchor=ledger.anchor_path, state_dir=Path(cfg.state_dir)):
        log.warning("%s", w)
    problems += anchor_location_problems(anchor=ledger.anchor_path)
    try:
        resolve_device(cfg.device)
    except RuntimeError as exc:
        problems.append(f"device: {exc}")
    if problems or data is None:
        raise ConfigError(problems, source="fl-client check")
    return data, needs


def resource_needs(cfg: SiteConfig, data: ImageData) -> tuple[list[Footprint], list[str]]:
    """What each built-in model the policy allows needs to train on `data` within `memory_mb`, and why it cannot:
    a limit that leaves no room for one example, a limit above what the machine has, too little disk for the
    front end's features."""
    from fedhaven.client.deployment import site_info
    from fedhaven.shared.features import features_cached
    from fedhaven.shared.footprint import data_footprint, disk_problems, machine_problems
    from fedhaven.shared.models import ModelError
    from fedhaven.shared.schema import DPConfig, ModelConfig

    needs, problems = [], machine_problems(need_mb=cfg.memory_mb, what=f"memory_mb = {cfg.memory_mb}")
    for name in BUILT_IN_MODELS:
        if not cfg.policy.allows_model(name):
            continue
        try:
            fp = data_footprint(model_cfg=ModelConfig(name=name), data=data, memory_mb=cfg.memory_mb, dp=DPConfig())
        except ModelError:
            continue  # images this model does not take (the coordinator's check names it for a run that asks)
        needs.append(fp)
        problems += [f"{name}: {p}" for p in fp.memory_problems(setting="memory_mb")]
        if fp.feature_bytes and not features_cached(model_cfg=ModelConfig(name=name), data=data,
                                                    cache_dir=site_info(cfg, roster=False).cache()):
            problems += disk_problems(folder=site_info(cfg, roster=False).cache(), need_bytes=fp.feature_bytes,
                                      what=f"{name}'s front-end features")
    return needs, problems


def check_document(*, cfg: SiteConfig, data: ImageData, needs: list[Footprint], spent: float,
                   entries: int, anchor: Path) -> dict[str, Any]:
    """What a passed `fl-client check` found, for `--json` (an infinite epsilon is null with `private` false)."""
    from dataclasses import asdict

    p, spec = cfg.policy, data.spec
    models = [n for n in BUILT_IN_MODELS if p.allows_model(n)]
    return {
        "ok": True, "command": "fl-client check", "site": cfg.name,
        "coordinator": {"address": cfg.coordinator.address, "tls": not cfg.coordinator.insecure},
        "device": resolve_device(cfg.device),
        "data": {"images": len(data), "channels": spec.channels, "image_size": spec.image_size,
                 "classes": dict(data.class_counts())},
        # not strict: resource_needs leaves out a model that does not take these images
        "models": {m: asdict(fp) for m, fp in zip(models, needs, strict=False)},
        "ledger": {"entries": entries, "verified": True, "anchor": str(anchor)},
        "budget": {"epsilon_spent": None if math.isinf(spent) else spent, "private": not math.isinf(spent),
                   "max_epsilon": p.max_epsilon, "delta": p.delta,
                   "epsilon_left": None if math.isinf(spent) else max(0.0, p.max_epsilon - spent)},
        "policy": {"min_noise_multiplier": p.min_noise_multiplier, "require_dp": p.require_dp,
                   "require_secure_aggregation": p.require_secure_aggregation, "allowed_models": list(p.allowed_models),
                   "min_sites": p.min_sites, "secagg_min_threshold": p.secagg_min_threshold,
                   "secagg_min_neighbours": p.secagg_min_neighbours,
                   "roster": str(cfg.roster) if cfg.roster else None},
    }


def run(args: argparse.Namespace) -> int:
    cfg = load_site_config(args.config)
    if getattr(args, "report", None) is not None:  # before the checks: a report is most wanted when the data fails
        from fedhaven.client.quality.report import write_site_report

        write_site_report(cfg, folder=Path(args.report) if args.report else None)
    data, needs = check_site(cfg)
    ledger = cfg.ledger()
    spent = budget_spent(policy=cfg.policy, history=ledger.history())
    if getattr(args, "json", False):
        from fedhaven.shared.exitcodes import print_json

        print_json(check_document(cfg=cfg, data=data, needs=needs, spent=spent, entries=len(ledger.entries()),
                                  anchor=ledger.anchor_path))
        return 0
    log.info("site          %s", cfg.name)
    log.info("coordinator   %s (%s)", cfg.coordinator.address, "PLAIN HTTP" if cfg.coordinator.insecure else "TLS")
    log.info("device        %s", resolve_device(cfg.device))
    spec = data.spec
    log.info("data          %d images, %dx%dx%d, %d classes", len(data), spec.channels, spec.image_size,
             spec.image_size, len(data.classes))
    for name, count in data.class_counts().items():
        log.info("  %-12s %d", name, count)
    # not strict: resource_needs leaves out a model that does not take these images, so `needs` may be shorter
    for model, fp in zip([n for n in BUILT_IN_MODELS if cfg.policy.allows_model(n)], needs, strict=False):
        log.info("%-13s %s", model, "\n              ".join(fp.describe()))
    log.info("ledger        %d entries, chain verified, every epsilon recomputed, anchored in %s (the coordinator's "
             "witness is checked with every task)", len(ledger.entries()), ledger.anchor_path)
    if math.isinf(spent):
        log.warning("budget        NOT PRIVATE: a round trained without noise; epsilon inf of %g (delta %g)",
                    cfg.policy.max_epsilon, cfg.policy.delta)
    else:
        log.info("budget        epsilon %.3f spent of %g (delta %g): %.3f left", spent, cfg.policy.max_epsilon,
                 cfg.policy.delta, max(0.0, cfg.policy.max_epsilon - spent))
    log.info("policy        min noise %g, DP %s, secure aggregation %s, models %s", cfg.policy.min_noise_multiplier,
             "required" if cfg.policy.require_dp else "optional",
             "required" if cfg.policy.require_secure_aggregation else "optional", list(cfg.policy.allowed_models))
    p = cfg.policy
    log.info("secagg+       at least %d sites summed, threshold >= %d and above half the shares, >= %d other sites "
             "masking; neighbours %s", p.min_sites, p.secagg_min_threshold, p.secagg_min_neighbours,
             f"on the roster {cfg.roster}" if cfg.roster else "as the coordinator says (no roster pinned)")
    log.info("check passed")
    return 0
