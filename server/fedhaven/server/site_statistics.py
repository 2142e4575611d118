"""What sites chose to share about their data (their policy's opt-in, differentially private class histogram),
kept by the coordinator in RUN_DIR/site-statistics.json. A site's claim, read as untrusted input: bounded, numbers
only; its privacy cost is in the site's own ledger, not here."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedhaven.shared.files import write_atomic
from fedhaven.shared.text import printable

log = logging.getLogger("fedhaven.server")

STATISTICS_FILE = "site-statistics.json"
#: The metric a site's histogram travels in (`fedhaven.client.quality.histogram.HISTOGRAM_METRIC`).
HISTOGRAM_METRIC = "class_histogram"
MAX_CLASSES, MAX_BYTES = 10_000, 1 << 20


def parse_histogram(value: object) -> dict[str, float] | None:
    """A site's noisy histogram as {class: count}, or None when it is not one (too long, not JSON, not numbers)."""
    if not isinstance(value, str) or len(value) > MAX_BYTES:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or len(data) > MAX_CLASSES:
        return None
    out = {}
    for k, v in data.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return None
        out[printable(str(k), limit=200)] = float(v)
    return out


def record_site_statistics(*, run_dir: Path, results: Sequence[tuple[int, dict[str, Any]]], server_round: int) -> None:
    """Add every histogram in one round's replies to RUN_DIR/site-statistics.json (one per site and run)."""
    found = {}
    for _, m in results:
        if HISTOGRAM_METRIC in m:
            hist = parse_histogram(m[HISTOGRAM_METRIC])
            site = printable(str(m.get("site", "?")), limit=200)
            if hist is None:
                log.warning("site %s sent a class histogram that is not one; ignored", site)
                continue
            found[site] = {"class_histogram": hist, "round": server_round}
    if not found:
        return
    path = run_dir / STATISTICS_FILE
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(found)
    write_atomic(path, json.dumps(known, indent=2, sort_keys=True).encode())
    log.info("statistics    %d site(s) shared a noisy class histogram (their policy's choice, paid from their own "
             "privacy budget): %s", len(found), path)
