"""One line per round, the same for `fl-sim` and `fl-server run`: from a metrics.jsonl record (a dict)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

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


class ProgressBar:
    """On a terminal, each round line ends in a bar of the rounds done and the time left at the pace so far;
    elsewhere (a log file, a pipe, CI) the round lines stay plain."""

    WIDTH = 20

    def __init__(self, *, planned: int, stream: TextIO | None = None) -> None:
        self.planned = planned
        self.stream = stream
        self.started = time.monotonic()
        self.first: int | None = None  # the first round this process saw done (a resumed run starts later)

    def on_terminal(self) -> bool:
        stream = self.stream if self.stream is not None else sys.stderr
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def bar(self, rec: Mapping[str, Any]) -> str:
        """` [#####...............] 5/20, ~3 min left`; "" off a terminal or before round 1."""
        done = int(rec.get("round", 0))
        if not self.planned or done < 1 or rec.get("status") != "ok" or not self.on_terminal():
            return ""
        if self.first is None:
            self.first = done
        filled = min(self.WIDTH, round(self.WIDTH * done / self.planned))
        text = f"  [{'#' * filled}{'.' * (self.WIDTH - filled)}]"
        pace = (time.monotonic() - self.started) / max(1, done - self.first + 1)
        left = pace * (self.planned - done)
        if done < self.planned:
            text += f" ~{left / 60:.0f} min left" if left >= 90 else f" ~{left:.0f} s left"
        return text


def print_round(logger: logging.Logger, rec: Mapping[str, Any], *, planned: int | None = None,
                bar: ProgressBar | None = None) -> None:
    level, text = round_line(rec, planned=planned)
    logger.log(level, "%s%s", text, bar.bar(rec) if bar is not None else "")
    for line in absent_lines(rec, planned=planned):
        logger.warning("%s", line)
