"""Parameterizations give [0, 1] RGB images of the right shape, with gradients, as Lucid defines them."""

from __future__ import annotations

import math

import pytest
import torch

from fvexp.optvis.params import COLOR_CORRELATION, Fourier, Pixel, spectrum_scale, to_rgb


@pytest.mark.parametrize("make", [Pixel, Fourier, lambda b, s: Fourier(b, s, decorrelate=False),
                                  lambda b, s: Pixel(b, s, decorrelate=True)])
@pytest.mark.parametrize("size", [31, 64])
def test_images_are_rgb_in_unit_range_with_gradients(make, size: int) -> None:
    torch.manual_seed(0)
    param = make(3, size)
    images = param()
    assert images.shape == (3, 3, size, size)
    assert images.min() >= 0 and images.max() <= 1
    images[:, 0].mean().backward()
    grads = [p.grad for p in param.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_initial_images_are_near_grey_like_lucid() -> None:
    torch.manual_seed(0)
    for param in (Pixel(1, 64), Fourier(1, 64)):
        assert (param() - 0.5).abs().max() < 0.1


def test_fourier_scale_is_one_over_frequency_times_sqrt_area() -> None:
    scale = spectrum_scale(8, 1.0)
    assert scale[0, 0].item() == pytest.approx(8 * 8)  # f = 0 is clamped to 1/8: 1/(1/8) * sqrt(64)
    fy, fx = 0.25, 0.375  # row 2, column 3 of an 8x8 rfft grid
    assert scale[2, 3].item() == pytest.approx(1 / math.hypot(fy, fx) * 8)


def test_fourier_images_are_lucids_bit_for_bit() -> None:
    """Lucid's fft_image: the inverse FFT of the scaled spectrum, divided by 4 (fvexp divides the scale)."""
    param = Fourier(2, 16, decorrelate=False)
    lucid = torch.fft.irfft2(torch.view_as_complex(param.spectrum) * spectrum_scale(16, 1.0), s=(16, 16)) / 4
    assert param.raw().equal(lucid)


def test_decay_power_zero_gives_a_flat_spectrum() -> None:
    assert torch.allclose(spectrum_scale(16, 0), torch.full((16, 9), 16.0))


def test_colour_decorrelation_is_lucids_normalized_matrix() -> None:
    assert COLOR_CORRELATION.norm(dim=0).max().item() == pytest.approx(1.0)
    t = torch.zeros(1, 3, 1, 1)
    t[0, 0] = 1.0  # one unit of the first decorrelated component
    mixed = torch.logit(to_rgb(t, decorrelate=True)).flatten()
    assert torch.allclose(mixed, COLOR_CORRELATION[:, 0], atol=1e-5)


@pytest.mark.parametrize("name", ["Pixel", "Fourier", "LowRes", "LaplacianPyramid", "CPPN", "Maco"])
def test_every_parameterization_makes_images_of_any_channel_count(name: str) -> None:
    from fvexp.optvis import params

    for channels in (1, 4):
        images = getattr(params, name)(2, 32, channels=channels)()
        assert images.shape == (2, channels, 32, 32) and images.min() >= 0 and images.max() <= 1
    shared = params.Shared(2, 32, base=params.Fourier, channels=5)()
    assert shared.shape == (2, 5, 32, 32)
