"""ScatterNet: Opacus accepts it, only the head is exchanged, DP-SGD on cached features is the reference step."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from fedhaven.shared.data import FeatureData
from fedhaven.shared.features import cached_features
from fedhaven.shared.models import FrontEndModel, ModelError, build_model, dp_problems, split_front
from fedhaven.shared.schema import InputSpec, ModelConfig, TrainConfig
from fedhaven.shared.training import DPSettings, evaluate, train_local
from fedhaven.shared.weights import get_weights, set_weights


def _cfg(head: str = "linear", **kw) -> ModelConfig:
    return ModelConfig(name="scatternet", head=head, **kw)


@pytest.mark.parametrize("head", ["linear", "pointwise", "cnn"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 8), (3, 20)])
def test_shapes_and_opacus(head, channels, size):
    model = build_model(cfg=_cfg(head), spec=InputSpec(channels, size, 7))
    assert isinstance(model, FrontEndModel)
    assert dp_problems(model) == [] and dp_problems(model.head) == []
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 7)
    assert all(k.startswith("head.") for k in model.state_dict())  # the fixed front end is never exchanged


def test_front_end_may_not_hold_weights():
    with pytest.raises(ModelError, match="no parameters"):
        FrontEndModel(front=torch.nn.Linear(2, 2), head=torch.nn.Linear(2, 2), front_key="x")


def test_too_small_images_are_refused_with_the_fix():
    with pytest.raises(ModelError, match="scattering_j"):
        build_model(cfg=_cfg(scattering_j=3), spec=InputSpec(1, 6, 3))


def test_saved_weights_rebuild_a_model_that_classifies_raw_images(synthetic_images):
    spec = InputSpec(1, 8, 3)
    model = build_model(cfg=_cfg(scattering_l=4), spec=spec, seed=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # what model.pt holds
    rebuilt = build_model(cfg=_cfg(scattering_l=4), spec=spec, seed=2)
    rebuilt.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    x = synthetic_images.inputs(slice(0, 20))
    assert torch.allclose(rebuilt(x), model(x), atol=1e-6)


def _naive_clipped_mean(head, feats: FeatureData, clip: float) -> torch.Tensor:
    total = None
    for i in range(len(feats)):
        head.zero_grad()
        F.cross_entropy(head(feats.inputs(slice(i, i + 1))), feats.labels[i: i + 1]).backward()
        g = torch.cat([p.grad.flatten() for p in head.parameters()])
        g = g * min(1.0, clip / (g.norm().item() + 1e-6))
        total = g if total is None else total + g
    return total / len(feats)


@pytest.mark.parametrize("head_kind", ["linear", "pointwise", "cnn"])
@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_dp_step_on_cached_features_matches_naive_clipping(synthetic_images, head_kind, mode):
    data = synthetic_images.subset(torch.arange(16))
    model = build_model(cfg=_cfg(head_kind, scattering_l=4, width=4), spec=InputSpec(1, 8, 3), seed=0)
    front, head = split_front(model)
    feats = cached_features(front=front, front_key=model.front_key, data=data, cache_dir=None)
    start = get_weights(model)
    ref = _naive_clipped_mean(head, feats, 0.05)
    before = torch.cat([p.detach().flatten() for p in head.parameters()])
    train_local(model=head, data=feats, train=TrainConfig(local_epochs=1, batch_size=len(data), lr=1.0, momentum=0),
                dp=DPSettings(noise_multiplier=0.0, max_grad_norm=0.05, grad_sample_mode=mode), device="cpu",
                generator=torch.Generator().manual_seed(0))
    update = before - torch.cat([p.detach().flatten() for p in head.parameters()])
    assert torch.allclose(update, ref, atol=1e-6, rtol=1e-4)
    set_weights(model, start)  # the exchanged weights are the head's
    assert torch.equal(torch.cat([p.detach().flatten() for p in head.parameters()]), before)


def test_dp_training_on_features_learns(synthetic_images):
    model = build_model(cfg=_cfg(scattering_l=4), spec=InputSpec(1, 8, 3), seed=0)
    front, head = split_front(model)
    feats = cached_features(front=front, front_key=model.front_key, data=synthetic_images, cache_dir=None)
    report = train_local(model=head, data=feats, train=TrainConfig(local_epochs=5, batch_size=48, lr=1.0),
                         dp=DPSettings(noise_multiplier=0.5, max_grad_norm=1.0), device="cpu",
                         generator=torch.Generator().manual_seed(0))
    assert report.steps == 25 and report.noise_multiplier == 0.5
    _, acc_feats = evaluate(model=head, data=feats, device="cpu")
    _, acc_raw = evaluate(model=model, data=synthetic_images, device="cpu")
    assert acc_feats == acc_raw and acc_raw > 0.9
