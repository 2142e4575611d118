"""One line per round, the same for `fl-sim` and `fl-server run`: from a metrics.jsonl record (a dict)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

#: The coordinator's own log of a run (waits, site errors, resumption), beside its metrics; `fl-server run` follows it.
RUN_LOG = "coordinator.log"
#: Its line format: date, time, level, message (the fields `run_log_fields` reads back).
RUN_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def run_log_fields(line: str) -> tuple[str | None, str]:
    """(level, message) of one RUN_LOG line; (None, line) for a continuation line of a multi-line message."""
    parts = line.split(" ", 3)
    if len(parts) == 4 and parts[2] in logging.getLevelNamesMapping():
        return parts[2], parts[3]
    return None, line


def round_line(rec: Mapping[str, Any], *, planned: int | None = None) -> tuple[int, str]:
    """(log level, text) for one metrics.jsonl record; `planned` adds "/N" to the round number."""
    of = f"/{planned}" if planned else ""
    status = rec["status"]
    if status == "initial":
        return logging.INFO, f"round {0:3d}{of}  test accuracy {100 * rec['accuracy']:6.2f}%  (initial model)"
    if status == "resumed":
        return logging.WARNING, f"round {rec['round']:3d}{of}  RESUMED here: {'; '.join(rec.get('failures', ()))}"
    if status == "rejected":
        return logging.ERROR, f"round {rec['round']:3d}{of}  REJECTED, previous model kept: {rec.get('rejected')}"
    if status != "ok":
        why = "; ".join(list(rec.get("failures", ()))[:3]) or "no aggregate"
        return logging.ERROR, f"round {rec['round']:3d}{of}  FAILED (attempt {rec['attempt']}): {why}"
    eps = rec.get("epsilon_max")
    if not rec.get("private", True):
        shown = "epsilon ∞ (not private)"
    else:
        shown = f"epsilon max {eps:.3f}" if eps is not None else "epsilon max n/a"
    sites = f"sites {rec['sites_ok']}/{rec['sites_ok'] + rec['sites_failed']}"
    return logging.INFO, (f"round {rec['round']:3d}{of}  test accuracy {100 * rec['accuracy']:6.2f}%  "
                          f"loss {rec['loss']:.4f}  {shown}  {sites}  {rec['round_time_s']:.1f} s")


def absent_lines(rec: Mapping[str, Any], *, planned: int | None = None) -> list[str]:
    """For a round aggregated without some sites: one line per site that did not contribute, saying why."""
    if rec["status"] != "ok":
        return []
    of = f"/{planned}" if planned else ""
    return [f"round {rec['round']:3d}{of}  not counted: {why}" for why in dict.fromkeys(rec.get("failures", ()))]


def print_round(logger: logging.Logger, rec: Mapping[str, Any], *, planned: int | None = None) -> None:
    level, text = round_line(rec, planned=planned)
    logger.log(level, "%s", text)
    for line in absent_lines(rec, planned=planned):
        logger.warning("%s", line)
