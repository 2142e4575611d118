"""fl-sim with the scatternet model on digits: features cached once per site, a model.pt that classifies raw images."""

from __future__ import annotations

import json

import pytest
import torch

from fedhaven.shared.config import parse
from fedhaven.shared.models import build_model
from fedhaven.shared.schema import InputSpec, ModelConfig
from fedhaven.shared.sources import load_digits_data
from fedhaven.shared.training import evaluate
from fedhaven.sim.experiment import load_experiment
from fedhaven.sim.runner import run_experiment


@pytest.mark.slow
def test_digits_scatternet_three_sites(tmp_path):
    cache = tmp_path / "out"
    over = ["model.name=scatternet", "model.head=pointwise", "rounds=3", "train.local_epochs=2", "train.lr=1.0",
            "train.batch_size=75", "dp.target_epsilon=8.0", f"output_dir={cache}"]
    exp = load_experiment(source="digits", overrides=over)
    seen = []
    summary = run_experiment(exp=exp, run_dir=tmp_path / "run", on_round=seen.append)
    assert [r.status for r in seen] == ["initial", "ok", "ok", "ok"]
    assert seen[-1].accuracy > 0.8 and seen[-1].epsilon_max <= 8.0
    # each site computed its features once and kept them in the content-keyed cache, as did the coordinator for
    # its test set
    files = sorted((cache / ".feature-cache").glob("*.rows"))
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    # the exported model maps raw images to classes on its own (front end rebuilt from model.json)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    model = build_model(cfg=parse(ModelConfig, meta["model"]), spec=InputSpec(**meta["input"]), dp=False)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    _, acc = evaluate(model=model, data=load_digits_data(split="test"), device="cpu")
    assert acc == pytest.approx(summary.data["final_accuracy"], abs=1e-9)
    # a second run reuses every site's cached features: nothing rewritten
    run_experiment(exp=load_experiment(source="digits", overrides=[*over[:-1], "rounds=1", f"output_dir={cache}"]),
                   run_dir=tmp_path / "again")
    assert [f.stat().st_mtime_ns for f in sorted((cache / ".feature-cache").glob("*.rows"))] == stamps
