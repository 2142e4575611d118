"""Weights leave a site as clean, ordered numpy arrays; mismatches are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import ModelConfig
from fedhaven.shared.weights import clean_name, clean_state_dict, get_weights, set_weights, weight_names


def test_opacus_prefix_is_stripped():
    model = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 28, 10))
    wrapped = GradSampleModule(model)
    assert all(k.startswith("_module.") for k in wrapped.state_dict())
    assert list(clean_state_dict(wrapped.state_dict())) == list(model.state_dict())
    assert clean_name("_module._module.features.0.weight") == "features.0.weight"
    assert weight_names(wrapped) == weight_names(model)


def test_roundtrip_and_shape_errors():
    a = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 28, 10), seed=1)
    b = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 28, 10), seed=2)
    set_weights(b, get_weights(a))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    w = get_weights(a)
    with pytest.raises(ValueError, match="expected 10 arrays, got 9"):
        set_weights(b, w[:-1])
    bad = [*w[:-1], np.zeros(3, dtype=np.float32)]
    with pytest.raises(ValueError, match="expected shape"):
        set_weights(b, bad)
    w[0][...] = 7.0  # copies: editing exported arrays never touches the model
    assert not torch.all(a.state_dict()["features.0.weight"] == 7.0)
