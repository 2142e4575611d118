"""Explanations on the coordinator's test data: attribution maps find what a model looks at; files are written."""

from __future__ import annotations

import json

import torch
from torch import nn

from fedhaven.shared.data import ImageData
from fedhaven.shared.explain import EXPLAIN_JSON, attributions, explain_model

SIDE = 16
REGION = (slice(2, 6), slice(9, 13))  # rows 2-5, columns 9-12: the only place the class is written


def _marked(n: int, seed: int) -> ImageData:
    """Noise images whose class (0/1) is only whether one 4x4 patch is bright or dark."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, SIDE, SIDE), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    images[:, 0, REGION[0], REGION[1]] = torch.where(labels[:, None, None] == 1, 230, 25).to(torch.uint8)
    return ImageData(images, labels, ("dark", "bright"))


def _trained(data: ImageData) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIDE * SIDE, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = data.inputs(slice(None)), data.labels
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_attribution_maps_highlight_the_marked_region():
    train, test = _marked(256, 0), _marked(16, 1)
    model = _trained(train)
    x = test.inputs(slice(None))
    assert (model(x).argmax(1) == test.labels).float().mean() > 0.95
    maps = attributions(model=model, inputs=x, targets=model(x).argmax(1), steps=16)
    inside = maps[:, REGION[0], REGION[1]].sum((1, 2)) / maps.sum((1, 2))
    # the patch is 16 of 256 pixels (6%): a map that ignored it would put about that share there; every map puts
    # several times that, so a patch pixel carries on average over five times the attribution of any other pixel
    assert (inside > 0.2).all(), inside
    density = (inside / 16) / ((1 - inside) / (SIDE * SIDE - 16))
    assert density.mean() > 5, density


def test_explain_writes_maps_confusion_calibration_and_json(tmp_path):
    train, test = _marked(256, 0), _marked(60, 2)
    model = _trained(train)
    summary = explain_model(model=model, data=test, out_dir=tmp_path / "explain", batch_size=16, per_class=2,
                            max_examples=3, steps=8)
    out = tmp_path / "explain"
    on_disk = json.loads((out / EXPLAIN_JSON).read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert sum(map(sum, summary["confusion_matrix"])) == 60 == summary["test_examples"]
    assert 0 <= summary["calibration"]["ece"] <= 1 and len(summary["calibration"]["bins"]) == 10
    assert "no site spends privacy" in summary["privacy"]
    assert len(summary["attribution"]["examples"]) == 3  # capped
    for name in summary["files"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    acc = summary["per_class_accuracy"]
    assert set(acc) == {"dark", "bright"} and summary["accuracy"] > 0.9


def test_attributions_reach_the_raw_image_through_the_fixed_scattering_front():
    from fedhaven.shared.models import InputSpec, build_model
    from fedhaven.shared.schema import ModelConfig

    model = build_model(cfg=ModelConfig(name="scatternet"), spec=InputSpec(1, 28, 10), seed=0, dp=False)
    x = _marked(2, 3).inputs(slice(None))
    x = torch.nn.functional.interpolate(x, size=(28, 28))
    maps = attributions(model=model, inputs=x, targets=torch.tensor([0, 1]), steps=4)
    assert maps.shape == (2, 28, 28) and torch.isfinite(maps).all() and (maps.sum((1, 2)) > 0).all()


def test_attributions_in_smaller_passes_are_the_same_maps():
    torch.manual_seed(0)
    model = _trained(_marked(64, 0))
    x = _marked(3, 4).inputs(slice(None))
    targets = torch.tensor([0, 1, 0])
    whole = attributions(model=model, inputs=x, targets=targets, steps=12)
    for per_pass in (1, 5):
        assert torch.allclose(attributions(model=model, inputs=x, targets=targets, steps=12, steps_per_pass=per_pass),
                              whole, rtol=1e-4, atol=1e-6)


def test_the_attribution_pass_follows_the_memory_limit():
    from fedhaven.shared.explain import IG_STEPS, attribution_pass, attribution_step_bytes
    from fedhaven.shared.memory import MB, rss_mb
    from fedhaven.shared.models import InputSpec, build_model
    from fedhaven.shared.schema import ModelConfig

    model = build_model(cfg=ModelConfig(), spec=InputSpec(3, 224, 10), seed=0, dp=False)
    step = attribution_step_bytes(model, image_shape=(3, 224, 224))
    assert step > 3 * 224 * 224 * 4  # at least the image as floats, with its gradient and the front's work
    assert attribution_pass(model, image_shape=(3, 224, 224), memory_mb=None) == IG_STEPS
    held = int(rss_mb())
    # room for about four steps (the budget halves what is left for safety), and for none at all
    assert attribution_pass(model, image_shape=(3, 224, 224), memory_mb=held + 8 * step // MB + 1) in (3, 4, 5)
    assert attribution_pass(model, image_shape=(3, 224, 224), memory_mb=held // 2) == 1
