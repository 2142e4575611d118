"""The coordinator's record of a run, in plain Python: metrics.jsonl, per-round checkpoints, final model, site privacy."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedhaven.server.failures import NoRoundTrained, RoundFailed  # noqa: F401 - re-exported
from fedhaven.shared.config import to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.features import front_features
from fedhaven.shared.memory import MemoryBudget, eval_example_bytes
from fedhaven.shared.models import InputSpec, build_model, split_front
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.training import evaluate
from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.weights import state_dict_from_weights
from fedhaven.shared.witness import Witness


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
    # the L2 norm of the delta it sent (DP sites; NaN: none or garbage), as reported: what [robust]'s bound follows
    update_norm: float = math.nan


@dataclass(frozen=True)
class CentralNoise:
    """What the coordinator's central-DP noise was in one round: the mean of `sites` clipped updates.

    `noise_multiplier` is what is accounted: the mechanism's configured total. Under adaptive
    clipping Flower splits it (Andrew et al. 2021) into `value_noise_multiplier` on the update
    (std `noise_std` on the mean) and `count_noise_std` on the count of clipped sites.
    """

    server_round: int
    sites: int
    clipping_norm: float
    noise_multiplier: float
    noise_std: float
    value_noise_multiplier: float | None = None  # None: the same as noise_multiplier (fixed clipping)
    count_noise_std: float = 0.0


@dataclass(frozen=True)
class RoundRecord:
    """One line of metrics.jsonl."""

    round: int
    status: str  # "ok", "failed" (no aggregate), "rejected" (the [robust] guard kept the previous model), "initial"
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
    sites_rejected: int = 0  # sites whose update the [robust] guard rejected (counted in sites_failed too)
    time: float = field(default_factory=time.time)
    private: bool = True  # False: DP off, or some site's epsilon is infinite (epsilon_max is then written as null)
    unanswered: tuple[str, ...] = ()  # sites (or nodes) asked to train whose reply never came: they may have spent
    rejected: str | None = None  # status "rejected": why the [robust] guard kept the previous model
    update_norm: float | None = None  # [robust] under SecAgg+: L2 norm of the aggregate's model delta
    update_bound: float | None = None  # [robust]: the L2 bound every honest site keeps on its delta


def finite_or_none(x: float | None) -> float | None:
    """JSON has no infinity: a non-private site's epsilon is written as null."""
    return None if x is None or not math.isfinite(x) else x


class SiteWitnesses:
    """The coordinator's witness of each site's ledger: the last update it received from each site.

    Kept per site name with the node it came from, in memory or (deployment) in a JSON file
    under the coordinator's state directory, so it survives runs and restarts. Each task to a
    node carries the witness back; the site refuses when its ledger lacks that entry.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._mem: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return dict(self._mem)
        return dict(json.loads(self.path.read_text()).get("sites", {}))

    def for_node(self, node_id: int) -> Witness | None:
        """The witness to send with a task to `node_id`, or None when no update from it was ever received."""
        mine = [(v["time"], name, v) for name, v in self._load().items() if v.get("node_id") == node_id]
        if not mine:
            return None
        _, name, v = max(mine, key=lambda t: t[0])
        return Witness(site=name, seq=int(v["seq"]), prev_hash=str(v["prev_hash"]))

    def site_of(self, node_id: int) -> str | None:
        w = self.for_node(node_id)
        return w.site if w is not None else None

    def record(self, *, node_id: int, witness: Witness) -> None:
        """Remember the newest update received from a site (atomically, across concurrent runs)."""
        entry = {"seq": witness.seq, "prev_hash": witness.prev_hash, "node_id": node_id, "time": time.time()}
        if self.path is None:
            self._mem[witness.site] = entry
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            sites = self._load()
            sites[witness.site] = entry
            write_atomic(self.path, json.dumps({"sites": sites}, indent=1, sort_keys=True).encode())


class CentralEvaluator:
    """Evaluates global weights on the coordinator's held-out test set."""

    def __init__(self, *, run: RunConfig, data: ImageData, device: str, cache_dir: Path | None = None) -> None:
        self.data = data
        self.device = device
        self.model = build_model(cfg=run.model, spec=data.spec, dp=False)
        _, self._head = split_front(self.model)
        # A fixed front end (e.g. scattering) runs once on the test set, a chunk at a time, not at every evaluation.
        feats = front_features(model=self.model, data=data, cache_dir=cache_dir, memory_mb=run.memory_mb,
                               device=device)
        self._inputs: ImageData | FeatureData = data if feats is None else feats
        row = self._inputs.images.row_shape if isinstance(self._inputs, ImageData) else self._inputs.features.row_shape
        self._batch = MemoryBudget(run.memory_mb).rows(per_row_bytes=eval_example_bytes(self._head, row_shape=row),
                                                       cap=2048)

    def __call__(self, weights: Sequence[np.ndarray]) -> tuple[float, float]:
        state_dict_from_weights(self.model, weights)
        return evaluate(model=self._head, data=self._inputs, device=self.device, batch_size=self._batch)


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
                   strategy: dict[str, Any] | None = None) -> Path:
        """Everything a resumed run needs after `server_round`: weights, the strategy's state, what every site
        reported. Plain values and tensors only, so resuming never unpickles code."""
        path = self.run_dir / "checkpoints" / f"round-{server_round:03d}.pt"
        blob = {"format": CHECKPOINT_FORMAT, "round": server_round, "state_dict": self._payload(weights),
                "model": to_dict(self.run.model), "input": asdict(self.input_spec), "classes": list(self.classes),
                "config": run_identity(self.run), "sites": {k: asdict(v) for k, v in self.sites.items()},
                "unanswered": {k: list(v) for k, v in self.unanswered.items()},
                "histories": {k: [list(h) for h in v] for k, v in self.histories.items()},
                "strategy": strategy or {}}
        _torch_save_atomic(path, blob)
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
        _torch_save_atomic(path, self._payload(weights))
        meta = {"model": to_dict(self.run.model), "input": asdict(self.input_spec), "classes": list(self.classes),
                "format": "torch state_dict; rebuild with fedhaven.shared.models.build_model"}
        write_atomic(self.run_dir / "model.json", json.dumps(meta, indent=2).encode())
        return path


CHECKPOINT_FORMAT = 2
#: Settings that say where and how a run is driven, not what it trains: they may differ when it is resumed.
_OPERATIONAL = ("resume_from", "output_dir")


def run_identity(run: RunConfig) -> dict[str, Any]:
    """The run's config as written to config.json and checkpoints: what a resumed run must match."""
    return {k: v for k, v in to_dict(run).items() if k not in _OPERATIONAL}


class ResumeError(RuntimeError):
    """An interrupted run cannot be continued; the message says why and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """A readable checkpoint: the round it closes, its weights (exchange order) and everything saved with it."""

    path: Path
    round: int
    weights: list[np.ndarray]
    blob: dict[str, Any]


def read_rounds(run_dir: Path) -> list[RoundRecord]:
    """metrics.jsonl back as records (unknown keys ignored, a torn last line skipped)."""
    names = {f.name for f in fields(RoundRecord)}
    out = []
    path = run_dir / "metrics.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        rec = {k: v for k, v in raw.items() if k in names}
        for key in ("failures", "unanswered"):
            rec[key] = tuple(rec.get(key) or ())
        rec["epsilons"] = {k: (math.inf if v is None else v) for k, v in (rec.get("epsilons") or {}).items()}
        out.append(RoundRecord(**rec))
    return out


def load_checkpoint(*, run_dir: Path, run: RunConfig, input_spec: InputSpec) -> tuple[Checkpoint, list[str]]:
    """The newest checkpoint of `run_dir` that reads back whole and fits `run` (newest first); and a note for
    every newer one that did not (a corrupt or partial last checkpoint falls back to the one before)."""
    files = sorted((run_dir / "checkpoints").glob("round-*.pt"), reverse=True)
    skipped: list[str] = []
    model = build_model(cfg=run.model, spec=input_spec, dp=False)
    for path in files:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not a resumable fedhaven checkpoint (older format or foreign file)")
            model.load_state_dict(blob["state_dict"])
            weights = [t.numpy().copy() for t in blob["state_dict"].values()]
            for key in ("sites", "unanswered", "histories", "strategy", "config", "round"):
                blob[key]  # noqa: B018 - every key must be there
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is skipped, and said so
            skipped.append(f"{path.name} unreadable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        if blob["config"] != run_identity(run):
            differ = sorted(k for k in set(blob["config"]) | set(run_identity(run))
                            if blob["config"].get(k) != run_identity(run).get(k))
            raise ResumeError(f"{path} was written by a run with other settings ({', '.join(differ)}); resume with "
                              f"the interrupted run's own config.json")
        return Checkpoint(path=path, round=int(blob["round"]), weights=weights, blob=blob), skipped
    raise ResumeError(f"no readable checkpoint in {run_dir / 'checkpoints'}"
                      + (f" ({'; '.join(skipped)})" if skipped else "") + ": nothing to resume; start the run again")


def _torch_save_atomic(path: Path, obj: Any) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())
