"""A trained model in a form ONNX can hold: the scattering front end rewritten in real arithmetic (DFT as matrices).

`Scattering2D` computes with torch.fft on complex tensors, which neither of torch's ONNX exporters
converts (the TorchScript one has no `aten::fft_fft2`; the dynamo one no complex `unsqueeze`).
The transform is linear between its moduli, so each FFT is two real matrix products per axis with
the DFT's cosine and sine matrices, and the modulus is sqrt(re^2 + im^2): the same numbers up to
float32 rounding, from ONNX's MatMul, Pad, Slice and Sqrt only. Used for export, never for training
(an N x N DFT as a matrix costs O(N^3) where the FFT costs O(N^2 log N)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedhaven.shared.models import FrontEndModel, _AreaResize
from fedhaven.shared.scattering import Scattering2D

Complex = tuple[torch.Tensor, torch.Tensor]  # (real part, imaginary part)


def _filter_subsample(x_hat: torch.Tensor, filt: torch.Tensor, k: int) -> torch.Tensor:
    """`fedhaven.shared.scattering._filter_subsample` (the mean of the k x k blocks of x_hat * filt) as P X P^T with
    P = [I I ... I] / k: two nodes for any batch size, where the block loop traces into k*k slices."""
    prod = x_hat * filt
    if k == 1:
        return prod
    fold = torch.eye(prod.shape[-1] // k, dtype=prod.dtype).repeat(1, k) / k  # (n, k*n)
    return fold @ prod @ fold.T


class RealScattering2D(nn.Module):
    """`Scattering2D`'s forward pass in real arithmetic, with the same filters (taken from `scattering`)."""

    def __init__(self, scattering: Scattering2D) -> None:
        super().__init__()
        self.spec = spec = scattering.spec
        for name, buf in scattering.named_buffers():
            self.register_buffer(name, buf.detach().clone(), persistent=False)
        self.sizes = sorted({spec.padded // 2**level for level in range(spec.J + 1)})
        for n in self.sizes:
            k = torch.arange(n, dtype=torch.float64)
            angle = 2 * math.pi * torch.outer(k, k) / n
            self.register_buffer(f"cos_{n}", torch.cos(angle).float(), persistent=False)
            self.register_buffer(f"sin_{n}", torch.sin(angle).float(), persistent=False)

    def _dft(self, z: Complex, *, inverse: bool) -> Complex:
        """fft2 (or ifft2) over the last two axes: F z F with F = C - iS (C + iS, divided by n*n, for the inverse)."""
        n = z[0].shape[-1]
        c: torch.Tensor = getattr(self, f"cos_{n}")
        s: torch.Tensor = getattr(self, f"sin_{n}")
        s = s if inverse else -s
        re, im = z
        # left: (C + i s) (re + i im)
        re, im = c @ re - s @ im, c @ im + s @ re
        # right: (re + i im) (C + i s)
        re, im = re @ c - im @ s, im @ c + re @ s
        if inverse:
            re, im = re / (n * n), im / (n * n)
        return re, im

    def _filter(self, z: Complex, filt: torch.Tensor, k: int) -> Complex:
        return _filter_subsample(z[0], filt, k), _filter_subsample(z[1], filt, k)

    def _low(self, u_hat: Complex, level: int) -> torch.Tensor:
        J, n = self.spec.J, self.spec.out_size
        s = self._dft(self._filter(u_hat, getattr(self, f"phi_{level}"), 2 ** (J - level)), inverse=True)[0]
        return s[..., 1: 1 + n, 1: 1 + n]

    def _modulus_spectrum(self, z: Complex) -> Complex:
        """fft2 of |ifft2(z)|."""
        re, im = self._dft(z, inverse=True)
        u = torch.sqrt(re * re + im * im)
        return self._dft((u, torch.zeros_like(u)), inverse=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        total = spec.padded - spec.image_size
        before = total // 2
        flat = x.reshape(-1, 1, spec.image_size, spec.image_size).float()
        padded = nn.functional.pad(flat, (before, total - before, before, total - before), mode="reflect")[:, 0]
        x_hat = self._dft((padded, torch.zeros_like(padded)), inverse=False)
        order0 = [self._low(x_hat, 0)[:, None]]
        order1, order2 = [], []
        for j1 in range(spec.J):
            u1_hat = self._modulus_spectrum(self._filter((x_hat[0][:, None], x_hat[1][:, None]),
                                                         getattr(self, f"psi_{j1}_0"), 2**j1))
            order1.append(self._low(u1_hat, j1))
            for j2 in range(j1 + 1, spec.J):
                u2 = self._filter((u1_hat[0][:, :, None], u1_hat[1][:, :, None]), getattr(self, f"psi_{j2}_{j1}"),
                                  2 ** (j2 - j1))
                order2.append(self._low(self._modulus_spectrum(u2), j2).flatten(1, 2))
        out = torch.cat(order0 + order1 + order2, dim=1)
        return out.reshape(-1, spec.channels * spec.coefficients, spec.out_size, spec.out_size)


class MatrixAreaResize(nn.Module):
    """`_AreaResize` as two matrix products (A x A^T, A the area-averaging matrix): torch exports area
    interpolation to ONNX only when the sizes divide evenly (224 -> 56 does, 64 -> 56 does not)."""

    area: torch.Tensor
    area_t: torch.Tensor

    def __init__(self, resize: _AreaResize, image_size: int) -> None:
        super().__init__()
        eye = torch.eye(image_size, dtype=torch.float64)[None]
        area = nn.functional.adaptive_avg_pool1d(eye, resize.size)[0].T  # (size, image_size)
        self.register_buffer("area", area.float().contiguous(), persistent=False)
        self.register_buffer("area_t", area.T.float().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.area @ x @ self.area_t


def _twin(m: nn.Module, image_size: int) -> nn.Module:
    if isinstance(m, Scattering2D):
        return RealScattering2D(m)
    if isinstance(m, _AreaResize):
        return MatrixAreaResize(m, image_size)
    return m


def portable(model: nn.Module, *, image_size: int) -> nn.Module:
    """`model` (eval mode, for `image_size`-pixel images) with every `Scattering2D` and area resize replaced by its
    twin in matrix products; other models as they are.

    The weights are shared with `model`, not copied."""
    if not isinstance(model, FrontEndModel):
        return model.eval()
    front = nn.Sequential(*[_twin(m, image_size) for m in model.front.children()])
    return nn.Sequential(front, model.head).eval()
