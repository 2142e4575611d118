"""Membership inference (loss threshold): near chance under DP, clearly above it for an overfit non-private model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhaven.shared.accounting import noise_for_budget
from fedhaven.shared.audit import auc, membership_inference
from fedhaven.shared.models import build_model
from fedhaven.shared.schema import ModelConfig, TrainConfig
from fedhaven.shared.sources import load_digits_data
from fedhaven.shared.training import DPSettings, evaluate, schedule, train_local


def test_auc_matches_the_rank_definition():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 300).round(1), rng.normal(0, 1, 200).round(1)  # rounding makes ties
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[pos, neg])
    assert auc(positive=pos, negative=neg) == pytest.approx(expected, abs=1e-12)
    assert auc(positive=np.ones(3), negative=np.zeros(3)) == 1.0
    with pytest.raises(ValueError):
        auc(positive=np.ones(0), negative=np.ones(2))


def test_dp_keeps_membership_inference_near_chance_and_overfitting_does_not():
    torch.manual_seed(0)
    train, test = load_digits_data(split="train"), load_digits_data(split="test")
    # non-private and overfit: 100 examples, 100 epochs
    small = train.subset(np.arange(100))
    overfit = build_model(cfg=ModelConfig(name="lenet"), spec=train.spec, seed=0)
    train_local(model=overfit, data=small, train=TrainConfig(local_epochs=100, batch_size=20, lr=0.05), dp=None,
                device="cpu", generator=torch.Generator().manual_seed(0))
    leaky = membership_inference(model=overfit, members=small, non_members=test)
    # private: epsilon 2 at delta 1e-5 on all 1,348 training images
    cfg = TrainConfig(local_epochs=20, batch_size=128, lr=0.1)
    q, steps = schedule(num_examples=len(train), batch_size=cfg.batch_size, local_epochs=cfg.local_epochs)
    z = noise_for_budget(target_epsilon=2.0, delta=1e-5, sample_rate=q, steps=steps)
    private = build_model(cfg=ModelConfig(name="lenet"), spec=train.spec, seed=0)
    train_local(model=private, data=train, train=cfg, dp=DPSettings(noise_multiplier=z, max_grad_norm=1.0),
                device="cpu", generator=torch.Generator().manual_seed(0))
    guarded = membership_inference(model=private, members=train, non_members=test)
    assert evaluate(model=private, data=test, device="cpu")[1] > 0.5  # the private model did learn
    assert leaky.auc > 0.68, leaky
    assert abs(guarded.auc - 0.5) < 0.08, guarded
    assert leaky.auc - guarded.auc > 0.12
