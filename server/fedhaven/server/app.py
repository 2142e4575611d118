"""The ServerApp: one path for `fl-sim` and a deployed SuperLink, from the run config to the written run directory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedhaven.server.evaluation import CentralEvaluator
from fedhaven.server.federation import RunResult, run_federation
from fedhaven.server.progress import RUN_LOG, RUN_LOG_FORMAT
from fedhaven.server.records import RoundRecord
from fedhaven.server.witnesses import SiteWitnesses
from fedhaven.shared.explain import EXPLAIN_DIR
from fedhaven.shared.runtime import resolve_device
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.sources import load_data

log = logging.getLogger("fedhaven.server")


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Copy everything fedhaven logs during a run into `run_dir/coordinator.log` (deployed ServerApps have no
    terminal: Flower's executor keeps their output to itself)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / RUN_LOG)
    handler.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
    logger = logging.getLogger("fedhaven")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def serve(*, grid: Grid, context: Context, run: RunConfig, run_dir: Path, max_weight: float | None,
          witnesses: SiteWitnesses, on_round: Callable[[RoundRecord], None] | None = None,
          audit: Callable[[list[np.ndarray]], dict[str, Any]] | None = None,
          ledger_command: str | None = None, site_names: Sequence[str] = ()) -> RunResult:
    """Run `run` on `grid`: central evaluation on the test split of `run.data`, results in `run_dir`
    (`run.resume_from`, when set, is that directory: the run continues from its last complete round); `site_names`
    (simulation): the sites' names by partition id, for waits on sites that have not answered yet."""
    with run_log(run_dir):
        test = load_data(cfg=run.data, split="test", cache_dir=run.cache_dir())
        evaluator = CentralEvaluator(run=run, data=test, device=resolve_device("auto"), cache_dir=run.cache_dir())
        return run_federation(grid=grid, context=context, run=run, run_dir=run_dir, input_spec=test.spec,
                              classes=test.classes, evaluator=evaluator, max_weight=max_weight, on_round=on_round,
                              witnesses=witnesses, audit=audit, ledger_command=ledger_command, site_names=site_names,
                              explain=lambda w: evaluator.explain(w, out_dir=run_dir / EXPLAIN_DIR))


def make_server_app(
    *,
    run: RunConfig,
    run_dir: Path,
    max_weight: float | None,
    on_round: Callable[[RoundRecord], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    witnesses: SiteWitnesses | None = None,
    audit: Callable[[list[np.ndarray]], dict[str, Any]] | None = None,
    ledger_command: str | None = None,
    site_names: Sequence[str] = (),
) -> ServerApp:
    """A ServerApp for a run known in advance (simulation): `serve` with these arguments."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = serve(grid=grid, context=context, run=run, run_dir=run_dir, max_weight=max_weight,
                       witnesses=witnesses if witnesses is not None else SiteWitnesses(), on_round=on_round,
                       audit=audit, ledger_command=ledger_command, site_names=site_names)
        if on_result is not None:
            on_result(result)

    return app
