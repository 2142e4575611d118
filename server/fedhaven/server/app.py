"""The ServerApp: the same object serves `fl-sim` and a deployed SuperLink."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedhaven.server.federation import RunResult, run_federation
from fedhaven.server.recorder import CentralEvaluator, RoundRecord, SiteWitnesses
from fedhaven.shared.data import load_data
from fedhaven.shared.runtime import resolve_device
from fedhaven.shared.schema import RunConfig

log = logging.getLogger("fedhaven.server")


def make_server_app(
    *,
    run: RunConfig,
    run_dir: Path,
    max_weight: float | None,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    witnesses: SiteWitnesses | None = None,
    audit: Callable[[list], dict] | None = None,
    ledger_command: str | None = None,
) -> ServerApp:
    """A ServerApp that runs `run`, evaluating on the test split of `run.data`, writing to `run_dir`
    (the privacy report included; `witnesses`, `audit`, `ledger_command` as in `run_federation`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        test = load_data(cfg=run.data, split="test")
        evaluator = CentralEvaluator(run=run, data=test, device=resolve_device("auto"))
        result = run_federation(grid=grid, context=context, run=run, run_dir=run_dir, input_spec=test.spec,
                                classes=test.classes, evaluator=evaluator, max_weight=max_weight,
                                on_round=on_round, witnesses=witnesses, audit=audit, ledger_command=ledger_command)
        if on_result is not None:
            on_result(result)

    return app
