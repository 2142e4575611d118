"""Experiment tracking by the coordinator: every run to MLflow and TensorBoard, metrics.csv beside metrics.jsonl.

The coordinator logs what the sites' reports told it; a site never talks to a
tracking server. Tracking never fails a run: a backend that fails once says so
in one warning line and is left off for the rest of the run.

MLflow: the run's settings as parameters (experiment.json in simulation, else
the run config), per round (step = round number) `accuracy`, `loss`,
`round_time_s`, `epsilon_max`, `epsilon_mean` and `epsilon/<site>`; at the end
the run directory's files (model, privacy report, plots, metrics) as artifacts.
The store is `tracking.uri`, else MLFLOW_TRACKING_URI, else a local file store
`mlruns` beside the run directories. TensorBoard gets the same scalars under
the same names in `<run dir>/tensorboard`. Both run on one background thread,
so neither a slow tracking server nor MLflow's import ever holds a round up.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedhaven.server.records import RoundRecord, read_rounds
from fedhaven.shared.config import flatten, to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.schema import RunConfig

log = logging.getLogger("fedhaven.server")

#: Set to "off" (or 0, false, no), it turns tracking off for every run of this process and the processes it starts,
#: whatever the config says (the test suite and benchmarks run without it; metrics.csv is still written).
TRACKING_ENV = "FEDHAVEN_TRACKING"
#: In the run directory: which MLflow run this run is logged as (a resumed run goes on logging into it).
TRACKING_FILE = "tracking.json"
#: TensorBoard's event files, in the run directory.
TENSORBOARD_DIR = "tensorboard"
#: The local MLflow file store, beside the run directories, when no tracking URI is set.
MLRUNS_DIR = "mlruns"
#: metrics.csv's leading columns; then one `epsilon/<site>` column per site, in name order.
CSV_COLUMNS = ("round", "status", "attempt", "accuracy", "loss", "epsilon_max", "epsilon_mean", "sites_ok",
               "sites_failed", "sites_rejected", "round_time_s", "fit_time_s", "eval_time_s", "secure_aggregation",
               "private", "time")
#: The per-round scalars logged to MLflow and TensorBoard (besides `epsilon/<site>`).
SCALARS = ("accuracy", "loss", "round_time_s", "epsilon_max", "epsilon_mean", "sites_ok", "sites_failed")
_SKIPPED_ARTIFACTS = {TRACKING_FILE}
#: How long the end of a run waits for tracking to catch up (a slow server), in seconds.
FINISH_WAIT_S = 120.0


def tracking_uri(run: RunConfig, run_dir: Path) -> str:
    """Where MLflow logs: the config's URI, else MLFLOW_TRACKING_URI, else `file:` a store beside the run dirs."""
    return run.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or (
        (run_dir.resolve().parent / MLRUNS_DIR).as_uri())


def tracking_switched_off() -> bool:
    """FEDHAVEN_TRACKING=off: no MLflow, no TensorBoard, whatever the runs' configs say."""
    return os.environ.get(TRACKING_ENV, "").strip().lower() in ("0", "off", "false", "no")


def metric_name(site: str) -> str:
    """`epsilon/<site>` with the characters MLflow refuses in a metric name replaced (site names are claims)."""
    return "epsilon/" + (re.sub(r"[^A-Za-z0-9_.\- ]", "_", site)[:200] or "_")


def round_scalars(rec: RoundRecord) -> dict[str, float]:
    """The finite numbers of one round record, by metric name; nothing for a resumption marker."""
    if rec.status == "resumed":
        return {}
    values: dict[str, Any] = {k: getattr(rec, k) for k in SCALARS}
    values.update({metric_name(site): eps for site, eps in rec.epsilons.items()})
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def write_csv(run_dir: Path, rounds: Sequence[RoundRecord]) -> Path:
    """metrics.csv: one row per metrics.jsonl record, per-site epsilons as columns (empty: not private/unknown)."""
    sites = sorted({s for r in rounds for s in r.epsilons})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*CSV_COLUMNS, *(f"epsilon/{s}" for s in sites)])
    for r in rounds:
        row = asdict(r)
        cells = ["" if row[c] is None or (isinstance(row[c], float) and not math.isfinite(row[c])) else row[c]
                 for c in CSV_COLUMNS]
        eps = [r.epsilons.get(s) for s in sites]
        writer.writerow([*cells, *("" if e is None or not math.isfinite(e) else e for e in eps)])
    path = run_dir / "metrics.csv"
    write_atomic(path, out.getvalue().encode())
    return path


def run_params(run: RunConfig, run_dir: Path) -> dict[str, str]:
    """The settings logged as MLflow parameters: the experiment's own (simulation) or the run config, flat."""
    try:
        data = json.loads((run_dir / "experiment.json").read_text())
    except (OSError, ValueError):
        data = to_dict(run)
    flat = flatten({k: v for k, v in data.items() if k not in ("tracking", "resume_from", "output_dir")})
    return {k: str(v)[:6000] for k, v in sorted(flat.items())}


class RunTracker:
    """One run's MLflow run and TensorBoard writer, fed on a background thread; every call is safe (a failure is a
    warning, once)."""

    def __init__(self, *, run: RunConfig, run_dir: Path, resuming: bool = False) -> None:
        self.run, self.run_dir = run, run_dir
        self.enabled = run.tracking.enabled and not tracking_switched_off()
        self.mlflow: Any = None  # mlflow.MlflowClient while MLflow works
        self.mlflow_run: str | None = None
        self.writer: Any = None  # torch.utils.tensorboard.SummaryWriter while TensorBoard works
        self._csv_ok = True
        self._work: queue.Queue[tuple[Callable[..., object], tuple[Any, ...]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._worker, name="fedhaven-tracking", daemon=True)
            self._thread.start()
            self._later(self._guard, "MLflow", self._open_mlflow, resuming)
            self._later(self._guard, "TensorBoard", self._open_tensorboard)

    def _later(self, call: Callable[..., object], *args: Any) -> None:
        if self._thread is not None:
            self._work.put((call, args))

    def _worker(self) -> None:
        while (item := self._work.get()) is not None:
            call, args = item
            call(*args)

    # ----- the run loop's calls -----
    def chain(self, on_round: Callable[[RoundRecord], None] | None) -> Callable[[RoundRecord], None]:
        """A round hook that calls `on_round` (the progress line), then tracks the round."""
        def hook(rec: RoundRecord) -> None:
            if on_round is not None:
                on_round(rec)
            self.round(rec)

        return hook

    def round(self, rec: RoundRecord) -> None:
        """Log one round record (and rewrite metrics.csv from metrics.jsonl)."""
        if self._csv_ok:
            try:
                write_csv(self.run_dir, read_rounds(self.run_dir))
            except Exception as exc:  # noqa: BLE001 - a report file never fails the run
                self._csv_ok = False
                log.warning("metrics.csv could not be written (%s); metrics.jsonl has every round", exc)
        values = round_scalars(rec)
        if values:
            self._later(self._log_round, rec.round, rec.time, values)

    def _log_round(self, step: int, stamp: float, values: Mapping[str, float]) -> None:
        if self.mlflow is not None:
            self._guard("MLflow", self._mlflow_round, step, stamp, values)
        if self.writer is not None:
            self._guard("TensorBoard", self._tensorboard_round, step, stamp, values)

    def finish(self, *, rounds: Sequence[RoundRecord], outcome: str) -> None:
        """The plots, then the run directory's files as artifacts; the MLflow run ends with the run's outcome."""
        try:
            from fedhaven.server.plots import plot_rounds

            plot_rounds(rounds=list(rounds), run_dir=self.run_dir, title=self.run_dir.name)
        except Exception as exc:  # noqa: BLE001 - the plots are a view of metrics.jsonl, never the run's outcome
            log.warning("the accuracy and epsilon plots could not be drawn (%s); metrics.csv has the numbers", exc)
        self._later(self._log_finish, outcome)
        if self._thread is None:
            return
        self._work.put(None)
        self._thread.join(FINISH_WAIT_S)
        if self._thread.is_alive():
            log.warning("experiment tracking: still logging after %.0f s (a slow tracking server?); the run ends "
                        "without waiting for it", FINISH_WAIT_S)

    def _log_finish(self, outcome: str) -> None:
        if self.writer is not None:
            self._guard("TensorBoard", self.writer.close)
            self.writer = None
        if self.mlflow is not None:
            self._guard("MLflow", self._mlflow_finish, outcome)

    # ----- MLflow -----
    def _open_mlflow(self, resuming: bool) -> None:
        uri = tracking_uri(self.run, self.run_dir)
        if uri.startswith("file:"):  # MLflow 3 keeps its file store behind a switch ("maintenance mode")
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # an unreachable server: a warning, soon
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow import MlflowClient

        _quiet_library("mlflow")
        client = MlflowClient(tracking_uri=uri)
        previous = self._previous_run() if resuming else None
        if previous is not None:
            client.update_run(previous, status="RUNNING")
            self.mlflow, self.mlflow_run = client, previous
            return
        name = self.run.tracking.experiment
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                experiment_id = client.create_experiment(name)
            except Exception:  # noqa: BLE001 - created meanwhile by another run: take that one
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
                experiment_id = exp.experiment_id
        else:
            experiment_id = exp.experiment_id
        created = client.create_run(experiment_id, run_name=self.run_dir.name,
                                    tags={"fedhaven.run_dir": str(self.run_dir.resolve())})
        self.mlflow, self.mlflow_run = client, created.info.run_id
        params = run_params(self.run, self.run_dir)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
            client.log_batch(created.info.run_id, params=items[i:i + 100])
        write_atomic(self.run_dir / TRACKING_FILE, json.dumps(
            {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": created.info.run_id}, indent=2).encode())

    def _previous_run(self) -> str | None:
        try:
            return str(json.loads((self.run_dir / TRACKING_FILE).read_text())["run_id"])
        except (OSError, ValueError, KeyError):
            return None

    def _mlflow_round(self, step: int, stamp: float, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        assert self.mlflow_run is not None
        ms = int(stamp * 1000)
        self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(k, v, ms, step) for k, v in values.items()])

    def _mlflow_finish(self, outcome: str) -> None:
        assert self.mlflow_run is not None
        for path in _artifacts(self.run_dir):
            self.mlflow.log_artifact(self.mlflow_run, str(path))
        self.mlflow.set_tag(self.mlflow_run, "fedhaven.outcome", outcome)
        self.mlflow.set_terminated(self.mlflow_run, status="FINISHED" if outcome == "completed" else "FAILED")

    # ----- TensorBoard -----
    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))

    def _tensorboard_round(self, step: int, stamp: float, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step, walltime=stamp)
        self.writer.flush()

    # -----
    def _guard(self, backend: str, call: Callable[..., object], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - tracking never fails a run: warn once, go on without it
            if backend == "MLflow":
                self.mlflow = None
            else:
                self.writer = None
            log.warning("experiment tracking: %s failed (%s: %s); the run goes on without it", backend,
                        type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")


def _artifacts(run_dir: Path) -> Iterable[Path]:
    """The run directory's own files (model, privacy report, plots, metrics, configs, log); not its sub-folders
    (checkpoints, simulated sites' state, event files)."""
    return sorted(p for p in run_dir.iterdir() if p.is_file() and p.name not in _SKIPPED_ARTIFACTS)


def _quiet_library(name: str) -> None:
    """A library's own INFO lines (MLflow: "Creating a new experiment") only when fedhaven is verbose."""
    if not logging.getLogger("fedhaven").isEnabledFor(logging.DEBUG):
        logging.getLogger(name).setLevel(logging.WARNING)
