"""A site with a fixed front end: RGB ImageFolder data of another size, features computed once, only the head sent."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedhaven.client.site import SiteTrainer
from fedhaven.client.types import PrivacyState, Site, SiteInfo
from fedhaven.server.evaluation import CentralEvaluator
from fedhaven.shared import features
from fedhaven.shared.models import build_model
from fedhaven.shared.schema import DPConfig, ModelConfig, RunConfig, TrainConfig
from fedhaven.shared.sources import load_imagefolder
from fedhaven.shared.task import task_for_round
from fedhaven.shared.weights import get_weights, weight_names

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def _folder(root, n: int, seed: int) -> None:
    """An RGB ImageFolder tree of 22x22 images: the class is the colour of a noisy square."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 60, (22, 22, 3), dtype=np.uint8)
            x, y = rng.integers(0, 10, 2)
            img[y: y + 12, x: x + 12] = colour
            Image.fromarray(img).save(root / name / f"{i}.png")


@pytest.fixture
def rgb_site(tmp_path):
    _folder(tmp_path / "train", 30, 0)
    _folder(tmp_path / "test", 10, 1)
    train = load_imagefolder(tmp_path / "train", image_size=16, channels=3)
    test = load_imagefolder(tmp_path / "test", image_size=16, channels=3)
    return train, test, tmp_path


def test_rgb_site_trains_the_head_on_features_computed_once(rgb_site, monkeypatch):
    train, test, tmp = rgb_site
    calls = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda **kw: calls.append(len(kw["data"])) or real(**kw))
    # full batches (sample rate 1): the accountant is instant there
    run = RunConfig(rounds=3, model=ModelConfig(name="scatternet", head="pointwise", width=8),
                    train=TrainConfig(batch_size=90, local_epochs=3, lr=1.0), dp=DPConfig(target_epsilon=8.0))
    trainer = SiteTrainer(site=Site(info=SiteInfo(name="rgb", state_dir=tmp / "state"), data=train))
    global_model = build_model(cfg=run.model, spec=train.spec, seed=0)
    weights, privacy = get_weights(global_model), PrivacyState()
    assert all(n.startswith("head.") for n in weight_names(global_model))
    for r in (1, 2, 3):
        task = task_for_round(run=run, server_round=r, input_spec=train.spec, classes=train.classes)
        out = trainer.fit(task=task, weights=weights, privacy=privacy)
        weights, privacy = out.weights, out.privacy
        assert out.metrics["steps"] > 0 and out.metrics["epsilon"] <= 8.0
    assert calls == [len(train)]  # once for the site, never per round
    assert len(list((tmp / "state" / "feature-cache").glob("*.rows"))) == 1
    # a restarted site (new process, same state dir) reads its features back instead of recomputing them
    again = SiteTrainer(site=Site(info=SiteInfo(name="rgb", state_dir=tmp / "state"), data=train))
    again.fit(task=task_for_round(run=run, server_round=3, input_spec=train.spec, classes=train.classes),
              weights=weights, privacy=privacy)
    assert calls == [len(train)]
    # the coordinator evaluates the same model on its own test set through the same front end, once
    evaluator = CentralEvaluator(run=run, data=test, device="cpu")
    assert calls == [len(train), len(test)]
    loss, acc = evaluator(weights)
    evaluator(weights)
    assert calls == [len(train), len(test)] and acc > 0.6 and np.isfinite(loss)


def test_a_larger_site_takes_more_passes_not_a_larger_physical_batch(rgb_site):
    """The physical batch has a fixed cap (as Opacus' BatchMemoryManager): 2,000 and 4,000 examples pass equally."""
    import torch

    from fedhaven.shared.data import FeatureData
    from fedhaven.shared.memory import PHYSICAL_BATCH_CAP
    from fedhaven.shared.models import split_front
    from fedhaven.shared.recipe import expected_batch

    train, _, tmp = rgb_site
    trainer = SiteTrainer(site=Site(info=SiteInfo(name="rgb", state_dir=tmp / "state", memory_mb=4096), data=train))
    _, head = split_front(build_model(cfg=ModelConfig(name="scatternet", head="pointwise", width=8), spec=train.spec))
    sizes = {}
    for n in (60, 2000, 4000):
        inputs = FeatureData(torch.zeros(n, 27, 8, 8), torch.zeros(n, dtype=torch.long), train.classes)
        sizes[n] = trainer.physical_batch(head, inputs, expected=expected_batch(site_size=n), ghost=True)
    assert sizes[2000] == sizes[4000] == PHYSICAL_BATCH_CAP  # 333 and 667 expected: both capped
    assert sizes[60] < PHYSICAL_BATCH_CAP  # a small site's whole Poisson batch in one pass
