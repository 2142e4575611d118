"""The export twin of the scattering front end computes what torch's FFT version computes, for any batch size."""

from __future__ import annotations

import pytest
import torch

from fedhaven.shared.models import build_model
from fedhaven.shared.portable import MatrixAreaResize, RealScattering2D, portable
from fedhaven.shared.schema import InputSpec, ModelConfig


@pytest.mark.parametrize(("spec", "resized"), [(InputSpec(1, 28, 10), False), (InputSpec(3, 64, 4), True),
                                               (InputSpec(1, 8, 10), False)])
def test_the_twin_computes_the_same_features_and_logits(spec, resized):
    model = build_model(cfg=ModelConfig(name="scatternet"), spec=spec, seed=0, dp=False).eval()
    twin = portable(model, image_size=spec.image_size)
    kinds = [type(m) for m in twin[0].children()]
    assert RealScattering2D in kinds and (MatrixAreaResize in kinds) == resized
    for n in (1, 5):
        x = torch.rand(n, spec.channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want, got = model.front(x * 2 - 1), twin[0](x * 2 - 1)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
            assert torch.allclose(twin(x * 2 - 1), model(x * 2 - 1), atol=1e-4)


def test_a_model_without_front_end_is_itself():
    model = build_model(cfg=ModelConfig(name="lenet"), spec=InputSpec(1, 28, 10), dp=False)
    assert portable(model, image_size=28) is model
