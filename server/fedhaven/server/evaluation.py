"""The coordinator's central evaluation on its held-out test set: a fixed front end once, then batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhaven.shared.data import FeatureData, ImageData
from fedhaven.shared.features import front_features
from fedhaven.shared.memory import MemoryBudget, eval_example_bytes
from fedhaven.shared.models import build_model, split_front
from fedhaven.shared.schema import RunConfig
from fedhaven.shared.training import evaluate
from fedhaven.shared.weights import state_dict_from_weights

log = logging.getLogger("fedhaven.server")


class CentralEvaluator:
    """Evaluates global weights on the coordinator's held-out test set."""

    def __init__(self, *, run: RunConfig, data: ImageData, device: str, cache_dir: Path | None = None) -> None:
        self.data = data
        self.device = device
        self.memory_mb = run.memory_mb
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

    def explain(self, weights: Sequence[np.ndarray], *, out_dir: Path) -> dict[str, Any] | None:
        """`out_dir` (RUN_DIR/explain) for `weights` on this test set (`fedhaven.shared.explain`): predictions from
        the cached features, attributions through the whole model. A failure is a warning: the run is kept."""
        from fedhaven.shared.explain import explain_model

        state_dict_from_weights(self.model, weights)
        try:
            out = explain_model(model=self.model, data=self.data, out_dir=out_dir, device=self.device,
                                batch_size=self._batch, predict=(self._head, self._inputs), memory_mb=self.memory_mb)
        except (RuntimeError, ValueError, OSError, ImportError) as exc:
            log.warning("explanations  not written (%s: %s); the model and its privacy report are", type(exc).__name__,
                        exc)
            return None
        log.info("explanations  %s: accuracy %.3f, calibration error (ECE) %.3f, %d attribution maps; from the "
                 "coordinator's own test data, no site's privacy spent", out_dir, out["accuracy"],
                 out["calibration"]["ece"], len(out["attribution"]["examples"]))
        return out
