"""DP-SGD against a naive reference: per-sample clipping, noise spread, Poisson sampling, empty batches."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fedhaven.shared import training
from fedhaven.shared.data import to_model_input
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import ModelConfig, TrainConfig
from fedhaven.shared.training import DPSettings, evaluate, poisson_batches, schedule, train_local
from fedhaven.shared.weights import get_weights


def _model(seed=0, norm="none"):
    return build_model(cfg=ModelConfig(activation="tanh", norm=norm), spec=InputSpec(1, 8, 3), seed=seed)


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _naive_clipped_mean(model, data, clip, expected_batch):
    """Per-example gradients one at a time, each clipped to `clip`, summed, divided by the expected batch size."""
    total = None
    for i in range(len(data)):
        model.zero_grad()
        x = to_model_input(data.images[i: i + 1])
        F.cross_entropy(model(x), data.labels[i: i + 1]).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        g = g * min(1.0, clip / (g.norm().item() + 1e-6))
        total = g if total is None else total + g
    return total / expected_batch


def _one_full_batch_step(model, data, *, noise, clip, mode, seed=0):
    """One DP-SGD step on the whole dataset (sample rate 1), lr 1, no momentum: returns the update."""
    before = _flat(model)
    train_local(model=model, data=data, train=TrainConfig(local_epochs=1, batch_size=len(data), lr=1.0, momentum=0),
                dp=DPSettings(noise_multiplier=noise, max_grad_norm=clip, grad_sample_mode=mode), device="cpu",
                generator=torch.Generator().manual_seed(seed))
    return before - _flat(model)


@pytest.mark.parametrize("mode", ["ghost", "ew", "hooks", "functorch"])
@pytest.mark.parametrize("clip", [0.05, 100.0])  # clipping binding for every example / for none
@pytest.mark.parametrize("norm", ["none", "group"])
def test_clipping_matches_naive_reference(synthetic_images, mode, clip, norm):
    data = synthetic_images.subset(torch.arange(24))
    ref = _naive_clipped_mean(_model(norm=norm), data, clip, len(data))
    update = _one_full_batch_step(_model(norm=norm), data, noise=0.0, clip=clip, mode=mode)
    assert torch.allclose(update, ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("mode", ["ghost", "ew"])
def test_noise_has_the_dp_sgd_spread(synthetic_images, mode):
    data = synthetic_images.subset(torch.arange(24))
    clean = _one_full_batch_step(_model(), data, noise=0.0, clip=0.5, mode=mode)
    noisy = _one_full_batch_step(_model(), data, noise=2.0, clip=0.5, mode=mode, seed=1)
    noise = noisy - clean
    expected = 2.0 * 0.5 / len(data)  # sigma * C / expected batch size, times lr 1
    assert noise.mean().abs() < 4 * expected / math.sqrt(noise.numel())
    assert noise.std().item() == pytest.approx(expected, rel=0.05)


def test_poisson_sampling_rate():
    g = torch.Generator().manual_seed(0)
    batches = list(poisson_batches(num_examples=1000, sample_rate=0.05, steps=400, generator=g))
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float)
    assert sizes.mean().item() == pytest.approx(50, rel=0.03)
    assert sizes.var().item() == pytest.approx(1000 * 0.05 * 0.95, rel=0.2)  # binomial, not fixed-size
    counts = torch.bincount(torch.cat(batches), minlength=1000).float()
    assert counts.mean().item() == pytest.approx(20, rel=0.03)  # every example equally likely
    tiny = [len(b) for b in poisson_batches(num_examples=10, sample_rate=0.01, steps=200, generator=g)]
    assert tiny.count(0) > 150  # empty batches happen


@pytest.mark.parametrize("mode", ["ghost", "ew", "hooks"])
def test_empty_batches_take_a_noise_only_step(synthetic_images, monkeypatch, mode):
    data = synthetic_images
    n_steps = schedule(num_examples=len(data), batch_size=24, local_epochs=0.1)[1]
    monkeypatch.setattr(training, "poisson_batches",
                        lambda **kw: iter([torch.zeros(0, dtype=torch.int64)] * kw["steps"]))
    model = _model()
    before = _flat(model)
    report = train_local(model=model, data=data, train=TrainConfig(local_epochs=0.1, batch_size=24, lr=1.0,
                                                                     momentum=0.0),
                         dp=DPSettings(noise_multiplier=1.5, max_grad_norm=1.0, grad_sample_mode=mode), device="cpu",
                         generator=torch.Generator().manual_seed(0))
    delta = _flat(model) - before
    assert report.empty_batches == report.steps == n_steps == 1
    assert torch.isfinite(delta).all()
    assert math.isnan(report.loss) and report.examples_seen == 0  # no fake metrics from no data
    assert delta.std().item() == pytest.approx(1.5 * 1.0 / 24, rel=0.05)  # noise / expected batch, not / 0


def test_weights_have_clean_names_and_model_can_be_wrapped_again(synthetic_images):
    model = _model()
    names = list(model.state_dict())
    for mode in ("hooks", "hooks", "ew", "ghost", "ghost"):
        train_local(model=model, data=synthetic_images, train=TrainConfig(batch_size=32),
                    dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode), device="cpu",
                    generator=torch.Generator().manual_seed(0))
        assert list(model.state_dict()) == names
        assert not any("_module" in k for k in model.state_dict())
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
        assert all(not hasattr(p, "grad_sample") for p in model.parameters())
    assert len(get_weights(model)) == len(names)


def test_dp_training_learns(synthetic_images):
    model = _model()
    loss0, acc0 = evaluate(model=model, data=synthetic_images, device="cpu")
    train_local(model=model, data=synthetic_images, train=TrainConfig(local_epochs=8, batch_size=48, lr=0.5),
                dp=DPSettings(noise_multiplier=0.8, max_grad_norm=1.0), device="cpu",
                generator=torch.Generator().manual_seed(0))
    loss1, acc1 = evaluate(model=model, data=synthetic_images, device="cpu")
    assert loss1 < 0.5 * loss0 and acc1 > 0.9 > acc0


def test_fedprox_term_pulls_towards_the_start(synthetic_images):
    start = _model()
    dists = {}
    for mu in (0.0, 5.0):
        model = copy.deepcopy(start)
        train_local(model=model, data=synthetic_images, train=TrainConfig(local_epochs=3, batch_size=24, lr=0.3),
                    dp=None, device="cpu", generator=torch.Generator().manual_seed(0), proximal_mu=mu)
        dists[mu] = (_flat(model) - _flat(start)).norm().item()
    assert dists[5.0] < 0.7 * dists[0.0]


def test_schedule():
    assert schedule(num_examples=6000, batch_size=512, local_epochs=1) == (512 / 6000, 12)
    assert schedule(num_examples=100, batch_size=512, local_epochs=2) == (1.0, 2)
    with pytest.raises(ValueError):
        schedule(num_examples=0, batch_size=1, local_epochs=1)


def test_ew_mode_accepts_slices_of_numpy_backed_images():
    # digits come from numpy with an odd stride on the channel axis; torch's expanded weights used to fail on it
    from fedhaven.shared.sources import load_digits_data

    data = load_digits_data(split="train").subset(torch.arange(40))
    model = build_model(cfg=ModelConfig(name="lenet"), spec=data.spec, seed=0)
    report = train_local(model=model, data=data, train=TrainConfig(local_epochs=1, batch_size=5, lr=0.1),
                         dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ew"), device="cpu",
                         generator=torch.Generator().manual_seed(0))
    assert report.examples_seen > 0 and math.isfinite(report.loss)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
@pytest.mark.parametrize("private", [True, False])
def test_a_step_split_into_physical_parts_is_the_undivided_step(synthetic_images, mode, private):
    """As Opacus' BatchMemoryManager: the parts' clipped gradients are summed and noised once, so splitting a
    Poisson batch changes memory, not the step (same noise draws: the same weights up to float rounding)."""
    import copy

    from fedhaven.shared.models import build_model
    from fedhaven.shared.schema import InputSpec, ModelConfig, TrainConfig
    from fedhaven.shared.training import DPSettings, train_local

    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode) if private else None
    base = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 8, 3), seed=0)
    weights = []
    for physical in (None, 7, 1):
        model = copy.deepcopy(base)
        report = train_local(model=model, data=synthetic_images, train=TrainConfig(batch_size=50, lr=0.5),
                             dp=dp, device="cpu", generator=torch.Generator().manual_seed(3), physical_batch=physical)
        assert physical is None or report.physical_batch <= physical
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    for w in weights[1:]:
        assert torch.allclose(w, weights[0], atol=1e-6)
    assert not any(hasattr(p, a) for p in model.parameters() for a in ("grad_sample", "_norm_sample"))  # unwrapped
