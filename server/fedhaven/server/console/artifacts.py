"""What a run page shows beyond its rounds: the trained model's explanations (RUN_DIR/explain, made by the
coordinator on its own test data) and what the coordinator knows of each site's data quality, which is only what a
site's policy chose to share (RUN_DIR/site-statistics.json); a site's quality report itself never leaves the site.

Files are read as untrusted display input (bounded, torn or odd content shown as absent), and an explanation figure
is served only when it is a regular file directly inside that run's explain folder: names are matched against a
strict pattern, links are not followed, and the opened file must lie under the state directory's runs folder.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhaven.server.site_statistics import STATISTICS_FILE
from fedhaven.shared.explain import EXPLAIN_DIR, EXPLAIN_JSON
from fedhaven.shared.files import read_json_object

#: Run folders the console serves from (`run-<Flower run id>`), and figure names inside their explain folder.
RUN_NAME = re.compile(r"run-[A-Za-z0-9_-]{1,64}")
FIGURE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.png")
#: Largest explain.json / site-statistics.json read, and largest figure served (bytes).
MAX_JSON, MAX_FIGURE = 8 << 20, 32 << 20
#: Classes of a shared histogram shown on the page (the rest are counted).
MAX_HISTOGRAM_ROWS = 40


@dataclass(frozen=True)
class Figure:
    file: str  # a name inside RUN_DIR/explain
    caption: str


@dataclass(frozen=True)
class ExplainView:
    """RUN_DIR/explain/explain.json as the run page shows it."""

    accuracy: float | None
    test_examples: int | None
    ece: float | None
    per_class_accuracy: tuple[tuple[str, float | None], ...]
    figures: tuple[Figure, ...]
    privacy: str
    method: str


@dataclass(frozen=True)
class SiteQuality:
    """What the coordinator knows of one site's data quality: a noisy class histogram the site chose to share
    (rounded counts, the round it came with), or nothing (`histogram` empty: the report stayed at the site)."""

    site: str
    histogram: tuple[tuple[str, float], ...] = ()
    more_classes: int = 0
    round: int | None = None

    @property
    def shared(self) -> bool:
        return bool(self.histogram) or self.more_classes > 0


def _bounded_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_JSON:
            return {}
    except OSError:
        return {}
    return read_json_object(path)


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _caption(key: str, file: str, ece: float | None) -> str:
    if key == "confusion_matrix":
        return "confusion matrix (rows: true class, columns: predicted)"
    if key == "reliability":
        return "reliability diagram" + (f" (expected calibration error {ece:.3f})" if ece is not None else "")
    if key.startswith("attributions_"):
        return f"integrated gradients, class {key.removeprefix('attributions_')}: the most confident right and " \
               f"wrong predictions"
    return file


def read_explain(run_dir: Path) -> ExplainView | None:
    """The run's explanations, or None when it has none (a run that trained nothing, or one still training)."""
    data = _bounded_json(run_dir / EXPLAIN_DIR / EXPLAIN_JSON)
    if not data:
        return None
    ece = _number(_object(data, "calibration").get("ece"))
    files = _object(data, "files")
    figures = []
    for key, file in files.items():  # confusion matrix and reliability first, then the classes in file order
        if isinstance(file, str) and FIGURE_NAME.fullmatch(file) and (run_dir / EXPLAIN_DIR / file).is_file():
            figures.append(Figure(file=file, caption=_caption(str(key), file, ece)))
    figures.sort(key=lambda f: (not f.file.startswith(("confusion", "reliability")), f.file))
    per_class, attribution = _object(data, "per_class_accuracy"), _object(data, "attribution")
    examples = data.get("test_examples")
    return ExplainView(accuracy=_number(data.get("accuracy")),
                       test_examples=int(examples) if isinstance(examples, int) and not isinstance(examples, bool)
                       else None,
                       ece=ece, per_class_accuracy=tuple((str(k), _number(v)) for k, v in per_class.items()),
                       figures=tuple(figures), privacy=str(data.get("privacy", "")),
                       method=str(attribution.get("method", "")))


def read_site_quality(run_dir: Path, sites: list[str]) -> tuple[SiteQuality, ...]:
    """Each of `sites` (and any site that shared a statistic in this run), with what it shared, by name."""
    shared = _bounded_json(run_dir / STATISTICS_FILE)
    out = {}
    for name, entry in shared.items():
        hist = entry.get("class_histogram") if isinstance(entry, dict) else None
        if not isinstance(hist, dict):
            continue
        counts = [(str(k), round(v)) for k, v in ((k, _number(raw)) for k, raw in hist.items()) if v is not None]
        rnd = entry.get("round")
        out[str(name)] = SiteQuality(site=str(name), histogram=tuple(counts[:MAX_HISTOGRAM_ROWS]),
                                     more_classes=max(0, len(counts) - MAX_HISTOGRAM_ROWS),
                                     round=rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else None)
    for name in sites:
        out.setdefault(name, SiteQuality(site=name))
    return tuple(out[k] for k in sorted(out))


def read_figure(runs: Path, *, run: str, file: str) -> bytes | None:
    """The bytes of RUNS/<run>/explain/<file>, or None unless it is a regular file of a figure's name directly in
    that folder, under `runs` (no `..`, no separators, no links followed, no device or FIFO, not oversized)."""
    if not RUN_NAME.fullmatch(run) or not FIGURE_NAME.fullmatch(file):
        return None
    folder = runs / run / EXPLAIN_DIR
    try:
        if not folder.resolve(strict=True).is_relative_to(runs.resolve(strict=True)):
            return None  # the run or explain folder is a link out of the runs folder
        fd = os.open(folder / file, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FIGURE:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_FIGURE + 1)[:MAX_FIGURE]
    finally:
        os.close(fd)
