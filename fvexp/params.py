"""Image parameterizations: the space the optimizer walks in, mapped to RGB images in [0, 1].

Both follow Lucid. A parameterization is an `nn.Module` whose parameters are optimized and whose
`forward()` returns a batch of images of shape (batch, 3, size, size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Square root of the colour covariance of ImageNet, from its SVD (Lucid's `color_correlation_svd_sqrt`),
# normalized by its largest column norm so that decorrelation never amplifies a channel.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


def to_rgb(t: Tensor, decorrelate: bool) -> Tensor:
    """Map unbounded values to [0, 1] RGB, first mixing decorrelated colour components if asked.

    Optimizing in decorrelated colour space makes each parameter move a natural colour direction,
    which the article finds removes the washed-out, grey-green look of plain RGB optimization.
    """
    if decorrelate:
        t = torch.einsum("dc,bchw->bdhw", COLOR_CORRELATION.to(t.device), t)
    return torch.sigmoid(t)


class Pixel(nn.Module):
    """One free parameter per pixel and colour: the naive basis, prone to high-frequency noise."""

    def __init__(self, batch: int, size: int, sd: float = 0.01, decorrelate: bool = False) -> None:
        super().__init__()
        self.pixels = nn.Parameter(torch.randn(batch, 3, size, size) * sd)
        self.decorrelate = decorrelate

    def forward(self) -> Tensor:
        return to_rgb(self.pixels, self.decorrelate)


class Fourier(nn.Module):
    """Image as a spectrum whose frequencies are scaled by 1/f^decay_power (Lucid's `fft_image`).

    Scaling each frequency by the inverse of its magnitude whitens the natural-image spectrum, so
    that gradient steps change low and high frequencies alike: a preconditioner that makes
    optimization faster and the results less noisy.
    """

    def __init__(
        self, batch: int, size: int, sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True
    ) -> None:
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freqs = (fx**2 + fy**2).sqrt()
        scale = freqs.clamp(min=1.0 / size).pow(-decay_power) * math.sqrt(size * size)
        self.register_buffer("scale", scale)
        self.spectrum = nn.Parameter(torch.randn(batch, 3, *freqs.shape, 2) * sd)
        self.size, self.decorrelate = size, decorrelate

    def forward(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size)) / 4.0
        return to_rgb(image, self.decorrelate)
