"""The coordinator's record of a run, in plain Python: metrics.jsonl, per-round checkpoints, final model, site privacy."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedhaven.shared.config import to_dict
from fedhaven.shared.features import cached_features
from fedhaven.shared.models import InputSpec, build_model, split_front
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.training import evaluate
from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.weights import state_dict_from_weights


class RoundFailed(RuntimeError):
    """A round produced no aggregate (e.g. SecAgg+ halted); never reported as success."""

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons

    @property
    def budget_exhausted(self) -> bool:
        """Whether every site that failed refused because its privacy budget is spent."""
        from fedhaven.shared.accounting import BUDGET_SPENT

        return bool(self.reasons) and all(BUDGET_SPENT in r for r in self.reasons)


@dataclass(frozen=True)
class SiteReport:
    """What one site reported for a round (its metrics, nothing else)."""

    site: str
    num_examples: int
    loss: float
    accuracy: float
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    total_steps: int
    train_time_s: float = 0.0


@dataclass(frozen=True)
class CentralNoise:
    """What the coordinator's central-DP noise was in one round: the mean of `sites` clipped updates."""

    server_round: int
    sites: int
    clipping_norm: float
    noise_multiplier: float
    noise_std: float


@dataclass(frozen=True)
class RoundRecord:
    """One line of metrics.jsonl."""

    round: int
    status: str  # "ok" or "failed"
    attempt: int
    loss: float | None
    accuracy: float | None
    epsilon_max: float | None
    epsilon_mean: float | None
    sites_ok: int
    sites_failed: int
    round_time_s: float
    fit_time_s: float
    eval_time_s: float
    secure_aggregation: bool
    sites_available: int = 0
    site_train_time_s: float = 0.0  # summed over the sites of the round: their local training loops only
    epsilons: dict[str, float | None] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)


def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: a non-private site's epsilon is written as null."""
    return None if x is None or not math.isfinite(x) else x


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CentralEvaluator:
    """Evaluates global weights on the coordinator's held-out test set."""

    def __init__(self, *, run: RunConfig, data: ImageData, device: str, cache_dir: Path | None = None) -> None:
        self.data = data
        self.device = device
        self.model = build_model(cfg=run.model, spec=data.spec, dp=False)
        front, self._head = split_front(self.model)
        # A fixed front end (e.g. scattering) runs once on the test set, not at every evaluation.
        self._inputs: ImageData | FeatureData = data if front is None else cached_features(
            front=front, front_key=self.model.front_key, data=data, cache_dir=cache_dir)  # type: ignore[arg-type]

    def __call__(self, weights: Sequence[np.ndarray]) -> tuple[float, float]:
        state_dict_from_weights(self.model, weights)
        return evaluate(model=self._head, data=self._inputs, device=self.device)


class RunRecorder:
    """Writes a run directory: config.json, metrics.jsonl, checkpoints/round-NNN.pt, model.pt, model.json."""

    def __init__(self, *, run_dir: Path, run: RunConfig, input_spec: InputSpec, classes: tuple[str, ...],
                 on_round: Callable[[RoundRecord], None] | None = None) -> None:
        self.run_dir = run_dir
        self.run = run
        self.input_spec = input_spec
        self.classes = classes
        self.on_round = on_round
        self.sites: dict[str, SiteReport] = {}
        self.rounds: list[RoundRecord] = []
        self._model = build_model(cfg=run.model, spec=input_spec, dp=False)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.json", json.dumps(to_dict(run), indent=2).encode())

    def site_reports(self, reports: Sequence[SiteReport]) -> None:
        for r in reports:
            self.sites[r.site] = r

    def record(self, rec: RoundRecord) -> None:
        self.rounds.append(rec)
        line = {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in asdict(rec).items()}
        line["epsilons"] = {k: finite_or_none(v) for k, v in rec.epsilons.items()}
        with (self.run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.on_round is not None:
            self.on_round(rec)

    def _payload(self, weights: Sequence[np.ndarray]) -> dict[str, Any]:
        return state_dict_from_weights(self._model, weights)

    def checkpoint(self, *, server_round: int, weights: Sequence[np.ndarray]) -> Path:
        path = self.run_dir / "checkpoints" / f"round-{server_round:03d}.pt"
        blob = {"round": server_round, "state_dict": self._payload(weights), "model": to_dict(self.run.model),
                "input": asdict(self.input_spec), "classes": list(self.classes),
                "sites": {k: asdict(v) for k, v in self.sites.items()}}
        _torch_save_atomic(path, blob)
        return path

    def finish(self, *, weights: Sequence[np.ndarray]) -> Path:
        path = self.run_dir / "model.pt"
        _torch_save_atomic(path, self._payload(weights))
        meta = {"model": to_dict(self.run.model), "input": asdict(self.input_spec), "classes": list(self.classes),
                "format": "torch state_dict; rebuild with fedhaven.shared.models.build_model"}
        write_atomic(self.run_dir / "model.json", json.dumps(meta, indent=2).encode())
        return path


def _torch_save_atomic(path: Path, obj: Any) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())
