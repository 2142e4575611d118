"""The front end's rule: it keeps MNIST's 7x7 grid, bounds the head's input for large images, and keeps the detail
that a rule always shrinking to 28 pixels would lose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhaven.shared.models import build_model, split_front
from fedhaven.shared.scattering import MAX_FRONT_SIZE, front_plan
from fedhaven.shared.schema import InputSpec, ModelConfig


@pytest.mark.parametrize(("size", "plan"), [(8, (8, 1)), (28, (28, 2)), (32, (32, 2)), (48, (48, 2)), (56, (56, 3)),
                                            (64, (56, 3)), (224, (56, 3)), (1024, (56, 3))])
def test_the_rule(size, plan):
    assert front_plan(size) == plan


def test_explicit_settings_win():
    assert front_plan(224, J=2) == (56, 2)
    assert front_plan(224, size=112) == (112, 3)
    assert front_plan(28, size=112) == (28, 2)  # never above the image


def test_the_head_sees_the_same_grid_whatever_the_image_size():
    for size, channels in ((28, 1), (224, 3), (512, 3)):
        model = build_model(cfg=ModelConfig(), spec=InputSpec(channels, size, 10))
        front, head = split_front(model)
        out = front(torch.zeros(2, channels, size, size))
        assert out.shape[-2:] == (7, 7) or size < MAX_FRONT_SIZE
        assert sum(p.numel() for p in head.parameters()) < 50_000  # small enough for DP-SGD
        assert model(torch.zeros(1, channels, size, size)).shape == (1, 10)  # the model takes raw images
    mnist = build_model(cfg=ModelConfig(), spec=InputSpec(1, 28, 10))
    assert mnist.front_key == "scattering2d-v1-J2-L8-c1-s28-gn27"  # MNIST's features are what they were


def test_the_area_resize_averages_whole_blocks():
    model = build_model(cfg=ModelConfig(), spec=InputSpec(1, 224, 2))
    resize = model.front[0]
    x = torch.rand(1, 1, 224, 224)
    assert torch.allclose(resize(x)[0, 0, 3, 5], x[0, 0, 12:16, 20:24].mean())


def _accuracy(size: int, train_root, test_root, tmp_path) -> float:
    from fedhaven.shared.features import cached_features
    from fedhaven.shared.schema import TrainConfig
    from fedhaven.shared.sources import load_imagefolder
    from fedhaven.shared.training import evaluate, train_local

    torch.manual_seed(0)
    train = load_imagefolder(train_root, image_size=size, channels=3, cache_dir=tmp_path)
    test = load_imagefolder(test_root, image_size=size, channels=3, cache_dir=tmp_path)
    model = build_model(cfg=ModelConfig(), spec=train.spec, seed=0)
    front, head = split_front(model)
    f_train = cached_features(front=front, front_key=model.front_key, data=train, cache_dir=tmp_path)
    f_test = cached_features(front=front, front_key=model.front_key, data=test, cache_dir=tmp_path)
    train_local(model=head, data=f_train, train=TrainConfig(local_epochs=15, batch_size=50, lr=0.01), dp=None,
                device="cpu", generator=torch.Generator().manual_seed(0))
    return evaluate(model=head, data=f_test, device="cpu")[1]


@pytest.mark.slow
def test_detail_finer_than_28_pixels_is_kept(tmp_path):
    """Stripes 4 pixels wide at 224x224 decide the label: the default model reads them at its working size (56);
    the same images resized to 28x28 average every stripe pair into one grey pixel (trained without DP, to compare
    the front ends, not the noise)."""
    from fedhaven.sim.imagesets import fine_stripes

    train_root = fine_stripes(tmp_path / "train", count=400, seed=0)
    test_root = fine_stripes(tmp_path / "test", count=200, seed=1)
    full = _accuracy(224, train_root, test_root, tmp_path / "cache")
    small = _accuracy(28, train_root, test_root, tmp_path / "cache")
    assert full >= 0.95 and full - small >= 0.2, (full, small)


def test_stripes_are_invisible_in_8x8_block_means():
    from fedhaven.sim.imagesets import stripes_image

    a = stripes_image(np.random.default_rng(3), label=0).astype(np.float64)
    b = stripes_image(np.random.default_rng(3), label=1).astype(np.float64)
    blocks = lambda im: im.reshape(28, 8, 28, 8, 3).mean(axis=(1, 3))  # noqa: E731 - a one-line helper
    assert not np.array_equal(a, b)
    assert np.abs(blocks(a) - blocks(b)).max() < 1  # rounding only: the same half-lit blocks


@pytest.mark.parametrize(("paths", "groups"), [(81, 27), (243, 81), (651, 217), (217, 31), (9, 3), (2, 1)])
def test_feature_groups_hold_three_paths_as_on_mnist(paths, groups):
    """MNIST's 81 paths in 27 groups (where the recipe was chosen); a 224x224 RGB image's 651 in 217 (one group
    for all of them, or per colour channel, measured 2 points worse: BENCHMARKS.md, "Large images")."""
    from fedhaven.shared.models import feature_groups

    assert feature_groups(paths, "auto") == groups
    assert feature_groups(paths, 27) == __import__("math").gcd(27, paths)  # a number: as before
