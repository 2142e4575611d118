"""A fixed 2D Morlet scattering transform (Mallat; Bruna & Mallat 2013) in torch: FFT-based, batched, no parameters.

The filters and the algorithm follow kymatio 0.3's `Scattering2D` (which Tramer &
Boneh 2021 used in front of DP-trained classifiers): Morlet wavelets at J scales
and L orientations, a Gaussian low-pass, reflect padding, and the multi-resolution
scheme that subsamples after each wavelet modulus. kymatio itself no longer
imports with the scipy this project pins, so the transform lives here. It is
data-independent: it costs no privacy and can be computed once per dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FRONT_GRID", "MAX_FRONT_SIZE", "MAX_J", "Scattering2D", "ScatteringSpec", "filter_bank", "front_plan"]

#: The rule's numbers. The head sees a grid of at least FRONT_GRID x FRONT_GRID coefficients, as on MNIST
#: (28 pixels at J=2: 7x7), where the recipe was chosen; J grows with the image up to MAX_J; images larger than
#: MAX_FRONT_SIZE = FRONT_GRID * 2**MAX_J pixels are first averaged down to it, which bounds the transform's cost
#: per image and the head's input whatever the image size.
FRONT_GRID = 7
MAX_J = 3
MAX_FRONT_SIZE = FRONT_GRID * 2**MAX_J


def front_plan(image_size: int, *, J: int | str = "auto", size: int | str = "auto") -> tuple[int, int]:
    """(the side the transform works at, J) for square images of `image_size` pixels: the one written rule.

    The working side is `image_size`, or MAX_FRONT_SIZE (56) for larger images
    (`size` overrides it, never above the image). J is the largest scale, at most
    MAX_J (3), that leaves a grid of at least FRONT_GRID (7) per side, at least 1
    (`J` overrides it): 28x28 -> (28, 2), 32 -> (32, 2), 56 -> (56, 3), 224 -> (56, 3).
    """
    work = min(image_size, MAX_FRONT_SIZE if size == "auto" else int(size))
    if J != "auto":
        return work, int(J)
    j = 1
    while j < MAX_J and work // 2 ** (j + 1) >= FRONT_GRID:
        j += 1
    return work, j


def _gabor(size: int, *, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """A 2D Gabor filter on a `size` x `size` grid, periodised over the 5x5 neighbouring tiles (as kymatio does)."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    offsets = np.arange(-2, 3) * size
    grid = np.arange(size)
    xx = (grid[None, :, None, None] + offsets[:, None, None, None])  # (5, size, 1, 1) rows
    yy = (grid[None, None, None, :] + offsets[None, None, :, None])  # (1, 1, 5, size) columns
    xx, yy = np.broadcast_arrays(xx, yy)  # (5, size, 5, size)
    arg = (-(curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy)
           + 1j * (xx * math.cos(theta) * xi + yy * math.sin(theta) * xi))
    gab = np.exp(arg).sum(axis=(0, 2))
    out: np.ndarray = gab / (2 * math.pi * sigma * sigma / slant)
    return out


def _morlet(size: int, *, sigma: float, theta: float, xi: float, slant: float) -> np.ndarray:
    """A Morlet wavelet: a Gabor filter minus the Gaussian envelope that makes its mean zero."""
    wave = _gabor(size, sigma=sigma, theta=theta, xi=xi, slant=slant)
    envelope = _gabor(size, sigma=sigma, theta=theta, xi=0.0, slant=slant)
    out: np.ndarray = wave - (wave.sum() / envelope.sum()) * envelope
    return out


def _crop_fourier(filt: np.ndarray, level: int) -> np.ndarray:
    """A Fourier-domain filter at 1/2**level of the resolution: keep the low frequencies, fold the rest (kymatio)."""
    if level == 0:
        return filt.copy()
    size = filt.shape[0]
    k = 2**level
    masked = filt.copy()
    start, length = int(size * 2.0 ** (-level - 1)), int(size * (1 - 2.0**-level))
    masked[start: start + length, :] = 0
    masked[:, start: start + length] = 0
    small = size // k
    out: np.ndarray = masked.reshape(k, small, k, small).sum(axis=(0, 2))
    return out


def filter_bank(*, size: int, J: int, L: int) -> tuple[list[list[list[np.ndarray]]], list[np.ndarray]]:
    """Fourier-domain filters on a `size` grid: psi[j][theta][level] (levels 0..j) and phi[level] (levels 0..J-1).

    Filters are real in the Fourier domain (kymatio drops the imaginary part, which
    is zero up to rounding).
    """
    psi = []
    for j in range(J):
        per_theta = []
        for t in range(L):
            theta = (int(L - L / 2 - 1) - t) * math.pi / L
            spatial = _morlet(size, sigma=0.8 * 2**j, theta=theta, xi=3.0 / 4.0 * math.pi / 2**j, slant=4.0 / L)
            four = np.real(np.fft.fft2(spatial))
            per_theta.append([_crop_fourier(four, level) for level in range(j + 1)])
        psi.append(per_theta)
    phi_four = np.real(np.fft.fft2(_gabor(size, sigma=0.8 * 2 ** (J - 1), theta=0.0, xi=0.0)))
    return psi, [_crop_fourier(phi_four, level) for level in range(J)]


@dataclass(frozen=True)
class ScatteringSpec:
    """The transform's parameters for one input shape; its `key` names the features it computes."""

    channels: int
    image_size: int
    J: int = 2
    L: int = 8

    VERSION = 1  # bump when the numbers this transform produces change

    @property
    def coefficients(self) -> int:
        """Scattering paths per input channel: 1 + J*L + L*L*J*(J-1)/2 (81 for J=2, L=8)."""
        return 1 + self.J * self.L + self.L * self.L * self.J * (self.J - 1) // 2

    @property
    def out_size(self) -> int:
        scale: int = 2**self.J
        return -(-self.image_size // scale)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.channels * self.coefficients, self.out_size, self.out_size)

    @property
    def padded(self) -> int:
        scale: int = 2**self.J
        return scale * (self.out_size + 2)

    @property
    def work_bytes_per_image(self) -> int:
        """An upper bound of the transform's working memory per image (its FFT intermediates), in bytes."""
        return 256 * self.channels * self.padded**2 * 4

    @property
    def key(self) -> str:
        return f"scattering2d-v{self.VERSION}-J{self.J}-L{self.L}-c{self.channels}-s{self.image_size}"

    def problems(self) -> list[str]:
        out = []
        if self.J < 1 or self.L < 1:
            out.append(f"scattering: J and L must be at least 1, got J={self.J}, L={self.L}")
        elif (self.padded - self.image_size + 1) // 2 > self.image_size - 1:
            out.append(f"scattering: {self.image_size}-pixel images are too small for J={self.J} "
                       f"(reflect padding needs image_size >= {2**self.J + 1}); lower model.scattering_j")
        return out


def _filter_subsample(x_hat: torch.Tensor, filt: torch.Tensor, k: int) -> torch.Tensor:
    """A spectrum times a real Fourier-domain filter, subsampled by `k`: the mean of the k*k blocks of the product,
    which is the spectrum of the filtered signal decimated by k in space.

    Computed block by block, never holding the full-resolution product: for the
    second order that product is 64 maps per image, and memory traffic, not
    arithmetic, set the speed.
    """
    if k == 1:
        return x_hat * filt
    h, w = x_hat.shape[-2] // k, x_hat.shape[-1] // k
    out: torch.Tensor | None = None
    for a in range(k):
        for b in range(k):
            rows, cols = slice(a * h, (a + 1) * h), slice(b * w, (b + 1) * w)
            blk = x_hat[..., rows, cols] * filt[..., rows, cols]
            out = blk if out is None else out.add_(blk)
    assert out is not None  # k > 1: at least one block
    return out.div_(k * k)


class Scattering2D(nn.Module):
    """(N, C, H, H) images in [-1, 1] -> (N, C*K, ceil(H/2^J), ceil(H/2^J)) scattering coefficients, K paths.

    Channel order per input channel: order 0; order 1 by (j, theta); order 2 by
    (j1, theta1, j2, theta2) with j2 > j1. The filters are non-persistent buffers:
    they are rebuilt from the spec, never exchanged or saved with the weights.
    """

    def __init__(self, spec: ScatteringSpec) -> None:
        super().__init__()
        problems = spec.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.spec = spec
        psi, phi = filter_bank(size=spec.padded, J=spec.J, L=spec.L)
        for j in range(spec.J):
            for level in range(j + 1):
                stack = np.stack([psi[j][t][level] for t in range(spec.L)])
                self.register_buffer(f"psi_{j}_{level}", torch.tensor(stack, dtype=torch.float32), persistent=False)
        for level in range(spec.J):
            self.register_buffer(f"phi_{level}", torch.tensor(phi[level], dtype=torch.float32), persistent=False)

    def _psi(self, j: int, level: int) -> torch.Tensor:
        psi: torch.Tensor = getattr(self, f"psi_{j}_{level}")
        return psi

    def _phi(self, level: int) -> torch.Tensor:
        phi: torch.Tensor = getattr(self, f"phi_{level}")
        return phi

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        total = self.spec.padded - self.spec.image_size
        before = total // 2
        return nn.functional.pad(x, (before, total - before, before, total - before), mode="reflect")

    def _low(self, u_hat: torch.Tensor, level: int) -> torch.Tensor:
        """Low-pass, subsample to the output resolution, back to space, crop the padding border."""
        J, n = self.spec.J, self.spec.out_size
        s = torch.fft.ifft2(_filter_subsample(u_hat, self._phi(level), 2 ** (J - level))).real
        low: torch.Tensor = s[..., 1: 1 + n, 1: 1 + n]
        return low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No parameters: autograd records nothing unless `x` requires a gradient, which only attribution maps
        # (fedhaven.shared.explain: gradients of the logits with respect to the raw image) ask for.
        spec = self.spec
        if x.dim() != 4 or x.shape[1:] != (spec.channels, spec.image_size, spec.image_size):
            raise ValueError(f"scattering expects (N, {spec.channels}, {spec.image_size}, {spec.image_size}), "
                             f"got {tuple(x.shape)}")
        n, c = x.shape[:2]
        x_hat = torch.fft.fft2(self._pad(x.reshape(n * c, 1, spec.image_size, spec.image_size).float())[:, 0])
        order0 = [self._low(x_hat, 0)[:, None]]
        order1, order2 = [], []
        for j1 in range(spec.J):
            u1 = torch.fft.ifft2(_filter_subsample(x_hat[:, None], self._psi(j1, 0), 2**j1)).abs()
            u1_hat = torch.fft.fft2(u1)  # (B, L, ...) at resolution level j1
            order1.append(self._low(u1_hat, j1))
            for j2 in range(j1 + 1, spec.J):
                u2 = _filter_subsample(u1_hat[:, :, None], self._psi(j2, j1), 2 ** (j2 - j1))  # (B, L, L, ...)
                u2 = torch.fft.ifft2(u2).abs()
                order2.append(self._low(torch.fft.fft2(u2), j2).flatten(1, 2))
        out = torch.cat(order0 + order1 + order2, dim=1)
        return out.reshape(n, c * spec.coefficients, spec.out_size, spec.out_size)
