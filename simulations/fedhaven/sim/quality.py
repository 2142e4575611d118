"""Each simulated site's data-quality report, written with the site (RUN_DIR/sites/<site>/quality), as a deployed
site's `fl-client check --report` writes it: computed from the site's own partition, never sent."""

from __future__ import annotations

import logging

from fedhaven.client.quality.report import QUALITY_DIR, write_data_report
from fedhaven.sim.sites import SimulatedSites

log = logging.getLogger("fedhaven.sim")


def write_site_reports(sites: SimulatedSites) -> None:
    """One report per simulated site with a state folder; a line naming where they are and what they found."""
    exp = sites.experiment
    found: dict[str, int] = {}
    root = None
    for i in range(exp.sites):
        info = sites.site_info(i)
        if info.state_dir is None:
            continue
        root = info.state_dir.parent
        report = write_data_report(site=info.name, data=sites.site_data(i), folder=info.state_dir / QUALITY_DIR,
                                   what=f"simulated site {i} of {exp.name}: part of {exp.data.source} "
                                        f"({exp.partition} partition)")
        for k, v in report.findings().items():
            found[k] = found.get(k, 0) + v
    if root is not None:
        log.info("data quality  %d sites: %d exact-duplicate groups, %d near-duplicate groups, %d odd images, %d "
                 "candidate label errors; each site's report in %s/<site>/%s", exp.sites,
                 found.get("exact_duplicate_groups", 0), found.get("near_duplicate_groups", 0), found.get("odd", 0),
                 found.get("label_issues", 0), root, QUALITY_DIR)
