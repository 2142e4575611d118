"""The deployed ServerApp: the SuperLink's executor runs it with the run config `fl-server run` submitted."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedhaven.server.federation import run_federation
from fedhaven.server.recorder import CentralEvaluator, SiteWitnesses
from fedhaven.shared.config import ConfigError, parse, unflatten
from fedhaven.shared.data import load_data
from fedhaven.shared.runtime import configure_logging, resolve_device
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
    if problems:
        raise ConfigError(problems, source="run config")
    return run


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_logging()
    run = run_config_from_context(context)
    run_dir = Path(run.output_dir) / f"run-{context.run_id}"
    test = load_data(cfg=run.data, split="test")
    evaluator = CentralEvaluator(run=run, data=test, device=resolve_device("auto"))
    max_weight = run.known_max_weight() if run.secagg.enabled else None
    # What the coordinator saw of each site's ledger survives runs and restarts, beside the runs.
    witnesses = SiteWitnesses(Path(run.output_dir) / WITNESS_FILE)
    result = run_federation(grid=grid, context=context, run=run, run_dir=run_dir, input_spec=test.spec,
                            classes=test.classes, evaluator=evaluator, max_weight=max_weight, witnesses=witnesses)
    log.info("run %s finished: %d rounds, privacy report in %s", context.run_id, len(result.rounds) - 1, run_dir)
