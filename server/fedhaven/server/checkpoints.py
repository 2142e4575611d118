"""Checkpoints a resumed run starts from: written whole, read back without unpickling code, checked against the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedhaven.server.locate.exclusions import Exclusions
from fedhaven.shared.config import to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import RunConfig

CHECKPOINT_FORMAT = 2


#: Settings that say where and how a run is driven, not what it trains: they may differ when it is resumed.
_OPERATIONAL = ("resume_from", "output_dir", "tracking")


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
                blob[key]  # every key must be there
            Exclusions.from_blob(blob.get("excluded"))  # sites located as bad (none before they were kept)
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


def torch_save_atomic(path: Path, obj: Any) -> None:
    """torch.save of plain values and tensors, written whole or not at all."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())
