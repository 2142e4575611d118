"""The coordinator's record of a run, in plain Python: metrics.jsonl, per-round checkpoints, final model,
site privacy."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedhaven.server.checkpoints import CHECKPOINT_FORMAT, Checkpoint, run_identity, torch_save_atomic
from fedhaven.server.records import RoundRecord, SiteReport, finite_or_none, read_rounds
from fedhaven.shared.config import to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.weights import state_dict_from_weights


class RunRecorder:
    """Writes a run directory: config.json, metrics.jsonl, checkpoints/round-NNN.pt, model.pt, model.json."""

    def __init__(self, *, run_dir: Path, run: RunConfig, input_spec: InputSpec, classes: tuple[str, ...],
                 on_round: Callable[[RoundRecord], None] | None = None, resuming: bool = False) -> None:
        self.run_dir = run_dir
        self.run = run
        self.input_spec = input_spec
        self.classes = classes
        self.on_round = on_round
        self.sites: dict[str, SiteReport] = {}
        self.rounds: list[RoundRecord] = []
        self.unanswered: dict[str, tuple[int, int]] = {}  # site -> (round, attempt) of a training reply never received
        self.histories: dict[str, list[tuple[float, float, int]]] = {}  # site -> (noise, rate, steps) of each report
        self._model = build_model(cfg=run.model, spec=input_spec, dp=False)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if resuming:  # the interrupted run's config.json and metrics.jsonl stay; its rounds are the history
            self.rounds = read_rounds(run_dir)
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists() and not metrics.read_bytes().endswith(b"\n"):
                with metrics.open("a") as fh:  # a line torn by the crash stays alone on its line (and is skipped)
                    fh.write("\n")
        else:
            write_atomic(run_dir / "config.json", json.dumps(run_identity(run), indent=2).encode())

    def site_reports(self, reports: Sequence[SiteReport], *, unanswered: Sequence[str] = (), server_round: int = 0,
                     attempt: int = 0) -> None:
        """Each site's newest report (its cumulative epsilon); and the sites asked to train that never replied:
        they may have trained and spent, so until they report again their epsilon is only bounded."""
        for r in reports:
            self.sites[r.site] = r
            self.unanswered.pop(r.site, None)
            self.histories.setdefault(r.site, []).append((r.noise_multiplier, r.sample_rate, r.steps))
        for name in unanswered:
            self.unanswered[name] = (server_round, attempt)

    def epsilons(self) -> dict[str, float]:
        """Every site's epsilon as the coordinator must state it: the newest reported, or, for a site whose last
        training reply was lost, the run's target (each site enforces it before training; infinite when the run
        is not private)."""
        bound = self.run.dp.target_epsilon if self.run.dp.enabled and not self.run.dp.not_private else math.inf
        out = {name: rep.epsilon for name, rep in self.sites.items()}
        for name in self.unanswered:
            out[name] = max(out.get(name, 0.0), bound)
        return out

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

    def checkpoint(self, *, server_round: int, weights: Sequence[np.ndarray],
                   strategy: dict[str, Any] | None = None, excluded: Sequence[dict[str, Any]] = ()) -> Path:
        """Everything a resumed run needs after `server_round`: weights, the strategy's state, what every site
        reported, the sites located as bad (`excluded`, with their evidence). Plain values and tensors only, so
        resuming never unpickles code."""
        path = self.run_dir / "checkpoints" / f"round-{server_round:03d}.pt"
        blob = {"format": CHECKPOINT_FORMAT, "round": server_round, "state_dict": self._payload(weights),
                "model": to_dict(self.run.model), "input": asdict(self.input_spec), "classes": list(self.classes),
                "config": run_identity(self.run), "sites": {k: asdict(v) for k, v in self.sites.items()},
                "unanswered": {k: list(v) for k, v in self.unanswered.items()},
                "histories": {k: [list(h) for h in v] for k, v in self.histories.items()},
                "strategy": strategy or {}, "excluded": [dict(e) for e in excluded]}
        torch_save_atomic(path, blob)
        return path

    def restore(self, ckpt: Checkpoint) -> None:
        """Take up what the interrupted run knew at its checkpoint. Every site it knew is counted as possibly
        having trained in the round that was lost (bounded) until it reports again."""
        self.sites = {k: SiteReport(**v) for k, v in ckpt.blob["sites"].items()}
        self.unanswered = {k: (int(v[0]), int(v[1])) for k, v in ckpt.blob["unanswered"].items()}
        self.histories = {k: [(float(a), float(b), int(c)) for a, b, c in v] for k, v in ckpt.blob["histories"].items()}
        for name in self.sites:
            self.unanswered.setdefault(name, (ckpt.round + 1, 0))

    def finish(self, *, weights: Sequence[np.ndarray]) -> Path:
        path = self.run_dir / "model.pt"
        torch_save_atomic(path, self._payload(weights))
        meta = {"model": to_dict(self.run.model), "input": asdict(self.input_spec), "classes": list(self.classes),
                "format": "torch state_dict; rebuild with fedhaven.shared.models.build_model"}
        write_atomic(self.run_dir / "model.json", json.dumps(meta, indent=2).encode())
        return path
