"""Models: the LeNet shape for each input, the registry, Opacus' DP check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedhaven.shared.models import InputSpec, LeNet, ModelError, build_model, dp_problems, model_names, register_model
from fedhaven.shared.schema import ModelConfig


@pytest.mark.parametrize(("channels", "size", "classes", "features"),
                         [(1, 28, 10, 16 * 4 * 4), (3, 32, 5, 16 * 5 * 5), (1, 8, 10, 16 * 2 * 2)])
def test_lenet_shapes(channels, size, classes, features):
    model = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(channels, size, classes))
    assert isinstance(model, LeNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5)]
    assert [lin.out_features for lin in linears] == [120, 84, classes]
    assert linears[0].in_features == features
    out = model(torch.zeros(2, channels, size, size))
    assert out.shape == (2, classes)


def test_lenet_has_no_batchnorm_and_passes_opacus():
    for norm in ("none", "group"):
        model = build_model(cfg=ModelConfig(norm=norm), spec=InputSpec(1, 28, 10))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert dp_problems(model) == []


def test_same_seed_same_initial_weights():
    a = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 28, 10), seed=3)
    b = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 28, 10), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError) as err:
        build_model(cfg=ModelConfig(name="resnet999"), spec=InputSpec(1, 28, 10))
    for name in model_names():
        assert name in str(err.value)


def test_batchnorm_model_is_refused_for_dp_but_allowed_without():
    @register_model("test-bn-cnn")
    def _bn(spec, cfg):
        return nn.Sequential(nn.Conv2d(spec.channels, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                             nn.LazyLinear(spec.num_classes))

    with pytest.raises(ModelError, match="BatchNorm.*GroupNorm"):
        build_model(cfg=ModelConfig(name="test-bn-cnn"), spec=InputSpec(1, 8, 10))
    assert build_model(cfg=ModelConfig(name="test-bn-cnn"), spec=InputSpec(1, 8, 10), dp=False) is not None


def test_bad_input_spec():
    with pytest.raises(ModelError, match="channels"):
        build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(2, 28, 10))
