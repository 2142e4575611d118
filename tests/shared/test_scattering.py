"""The scattering transform against a naive direct-convolution reference, its shapes, filters and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhaven.shared.scattering import Scattering2D, ScatteringSpec, filter_bank


def _circular_conv(signal: np.ndarray, filt_hat: np.ndarray) -> np.ndarray:
    """Direct 2D circular convolution with the spatial filter whose DFT is `filt_hat`: sum_m x[m] h[n - m]."""
    m = signal.shape[0]
    h = np.fft.ifft2(filt_hat)
    n1, n2, k1, k2 = np.meshgrid(np.arange(m), np.arange(m), np.arange(m), np.arange(m), indexing="ij")
    circulant = h[(n1 - k1) % m, (n2 - k2) % m]  # [n1, n2, k1, k2] = h[n - k]
    return np.einsum("abcd,cd->ab", circulant, signal)


def _reference(image: np.ndarray, spec: ScatteringSpec) -> np.ndarray:
    """The multi-resolution scattering computed with direct convolutions and spatial decimation, one path at a time."""
    J, L, n = spec.J, spec.L, spec.out_size
    total = spec.padded - spec.image_size
    x = np.pad(image, ((total // 2, total - total // 2),) * 2, mode="reflect").astype(np.complex128)
    psi, phi = filter_bank(size=spec.padded, J=J, L=L)

    def low(u: np.ndarray, level: int) -> np.ndarray:
        k = 2 ** (J - level)
        return _circular_conv(u, phi[level])[::k, ::k].real[1: 1 + n, 1: 1 + n]

    out = [low(x, 0)]
    order2 = []
    for j1 in range(J):
        for t1 in range(L):
            u1 = np.abs(_circular_conv(x, psi[j1][t1][0])[:: 2**j1, :: 2**j1])
            out.append(low(u1, j1))
            for j2 in range(j1 + 1, J):
                for t2 in range(L):
                    k = 2 ** (j2 - j1)
                    u2 = np.abs(_circular_conv(u1, psi[j2][t2][j1])[::k, ::k])
                    order2.append(low(u2, j2))
    return np.stack(out + order2)


@pytest.mark.parametrize(("size", "J", "L"), [(8, 2, 4), (12, 2, 3), (10, 1, 4)])
def test_matches_direct_convolution_reference(size, J, L):
    g = torch.Generator().manual_seed(size)
    images = torch.rand(2, 1, size, size, generator=g) * 2 - 1
    spec = ScatteringSpec(channels=1, image_size=size, J=J, L=L)
    got = Scattering2D(spec)(images).double().numpy()
    for i in range(2):
        want = _reference(images[i, 0].double().numpy(), spec)
        assert got[i].shape == want.shape
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_rgb_channels_are_transformed_independently():
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(2, 3, 8, 8, generator=g)
    spec = ScatteringSpec(channels=3, image_size=8, J=2, L=4)
    grey = ScatteringSpec(channels=1, image_size=8, J=2, L=4)
    out = Scattering2D(spec)(rgb)
    k = spec.coefficients
    for c in range(3):
        assert torch.allclose(out[:, c * k: (c + 1) * k], Scattering2D(grey)(rgb[:, c: c + 1]), atol=1e-6)


@pytest.mark.parametrize(("channels", "size", "shape"),
                         [(1, 28, (81, 7, 7)), (3, 32, (243, 8, 8)), (1, 8, (81, 2, 2)), (1, 30, (81, 8, 8))])
def test_output_shapes(channels, size, shape):
    spec = ScatteringSpec(channels=channels, image_size=size)
    assert spec.out_shape == shape
    assert Scattering2D(spec)(torch.zeros(3, channels, size, size)).shape == (3, *shape)


def test_filters_are_a_unit_low_pass_and_zero_mean_wavelets():
    psi, phi = filter_bank(size=36, J=2, L=8)
    assert phi[0][0, 0] == pytest.approx(1.0, abs=1e-3)  # the low-pass keeps the mean
    for j in range(2):
        for t in range(8):
            assert abs(psi[j][t][0][0, 0]) < 1e-6  # wavelets see no constant
            assert np.abs(psi[j][t][0]).max() > 0.5


def test_fixed_and_parameter_free():
    module = Scattering2D(ScatteringSpec(channels=1, image_size=28))
    assert list(module.parameters()) == [] and module.state_dict() == {}
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(module(x), module(x))


def test_too_small_or_wrong_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="too small.*scattering_j"):
        Scattering2D(ScatteringSpec(channels=1, image_size=4, J=2))
    module = Scattering2D(ScatteringSpec(channels=1, image_size=8))
    with pytest.raises(ValueError, match=r"expects \(N, 1, 8, 8\)"):
        module(torch.zeros(2, 3, 8, 8))
