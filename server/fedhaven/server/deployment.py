"""The deployed ServerApp: the run config `fl-server run` submitted, checked, then the one ServerApp path
(app.serve)."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedhaven.server.app import serve
from fedhaven.server.witnesses import SiteWitnesses
from fedhaven.shared.config import ConfigError, parse, unflatten
from fedhaven.shared.runtime import configure_logging
from fedhaven.shared.schema import RunConfig

log = logging.getLogger("fedhaven.server")
#: In the coordinator's runs directory: the last update received from each site (seq, previous hash, node).
WITNESS_FILE = "ledger-witnesses.json"


def run_config_from_context(context: Context) -> RunConfig:
    """The typed RunConfig from Flower's flat run config (checked again here: the file may have been edited)."""
    run = parse(RunConfig, unflatten(dict(context.run_config)), source="run config")
    problems = []
    if run.secagg.enabled and run.known_max_weight() is None:
        problems.append("secagg.max_weight: a deployed coordinator cannot see site sizes before training; set it "
                        "to at least the largest site's number of training examples")
    if not Path(run.output_dir).is_absolute():
        problems.append(f"output_dir: must be an absolute path on the coordinator, got {run.output_dir!r}")
    if run.resume_from and Path(run.resume_from).parent != Path(run.output_dir):
        problems.append(f"resume_from: {run.resume_from!r} is not a run of this coordinator ({run.output_dir})")
    if problems:
        raise ConfigError(problems, source="run config")
    return run


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployed run: the submitted config, results in `runs/run-<id>` (or the interrupted run's directory)."""
    configure_logging()
    run = run_config_from_context(context)
    run_dir = Path(run.resume_from) if run.resume_from else Path(run.output_dir) / f"run-{context.run_id}"
    # What the coordinator saw of each site's ledger survives runs and restarts, beside the runs.
    result = serve(grid=grid, context=context, run=run, run_dir=run_dir,
                   max_weight=run.known_max_weight() if run.secagg.enabled else None,
                   witnesses=SiteWitnesses(Path(run.output_dir) / WITNESS_FILE))
    log.info("run %s finished: %d rounds, privacy report in %s", context.run_id, len(result.rounds) - 1, run_dir)
