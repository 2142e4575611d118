"""The site's data-quality report (`fl-client check --report`, and each simulated site): written in the site's
state folder, never sent. The logic is `fedhaven.shared.quality`; this file picks the site's sources and folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fedhaven.shared.quality import QualityReport, site_quality
from fedhaven.shared.quality_scan import Source, data_source, folder_source

if TYPE_CHECKING:
    from fedhaven.client.site_config import SiteConfig
    from fedhaven.shared.data import ImageData

log = logging.getLogger("fedhaven.client")

#: The report's folder inside the site's state folder (0700: the site account's alone).
QUALITY_DIR = "quality"


def _sources(cfg: SiteConfig) -> tuple[Source, Source | None, int, str]:
    """(training source, test source or None, channels, description) of a site's data as its site.toml names it.
    An ImageFolder tree is read file by file (so unreadable and odd files are named); other sources decoded."""
    from fedhaven.client.deployment import site_info
    from fedhaven.shared.data import DataError
    from fedhaven.shared.sources import load_data

    d = cfg.data
    if d.source == "imagefolder":
        test_root = Path(d.test_path) if d.test_path else None
        test = folder_source(test_root) if test_root is not None and test_root.is_dir() else None
        return folder_source(Path(d.path or "")), test, d.channels or 3, f"ImageFolder tree {d.path}"
    cache = site_info(cfg, roster=False).cache()
    train = load_data(cfg=d, split="train", cache_dir=cache)
    try:
        held: ImageData | None = load_data(cfg=d, split="test", cache_dir=cache)
    except (DataError, OSError):
        held = None  # no test split at the site
    test = data_source(held, what="test image") if held is not None else None
    return data_source(train), test, train.spec.channels, f"{d.source} data {d.folder('train') or ''}".strip()


def write_site_report(cfg: SiteConfig, *, folder: Path | None = None) -> tuple[QualityReport, Path] | None:
    """Scan the site's data, write quality.json and quality.md into `folder` (default: STATE_DIR/quality), log a
    summary; (report, folder). None, with the reason logged, when the data cannot be listed at all (a missing
    folder, an unreadable IDX file): the check that follows names that problem with the others."""
    try:
        train, test, channels, what = _sources(cfg)
    except (ValueError, OSError) as exc:  # DataError is a ValueError
        log.error("data quality  no report: %s", exc)
        return None
    cache = Path(cfg.state_dir)
    report = site_quality(site=cfg.name, source=train, channels=channels, what=what, test=test,
                          scratch=cache if cache.is_dir() else None)
    out = folder if folder is not None else Path(cfg.state_dir) / QUALITY_DIR
    report.write(out)
    log_summary(report, out)
    return report, out


def write_data_report(*, site: str, data: ImageData, folder: Path, what: str) -> QualityReport:
    """The same report for data already decoded (a simulated site's partition) into `folder`."""
    report = site_quality(site=site, source=data_source(data), channels=data.spec.channels, what=what)
    report.write(folder)
    return report


def log_summary(report: QualityReport, folder: Path) -> None:
    c = report.findings()
    log.info("data quality  %d unreadable, %d exact-duplicate groups, %d near-duplicate groups, %d in both train "
             "and test, %d odd (%d nearly blank), %d candidate label errors", c["unreadable"],
             c["exact_duplicate_groups"], c["near_duplicate_groups"], c["train_test_duplicates"], c["odd"], c["blank"],
             c["label_issues"])
    log.info("              report in %s (quality.md, quality.json): kept at this site, never sent", folder)
