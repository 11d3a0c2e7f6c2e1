"""Frequency penalties on the image itself: objectives that are subtracted, `objective - 0.1 * l1()`.

As in Lucid, a penalty is positive and is subtracted from what is maximized; the config's
`regularizers.<name>.weight=w` subtracts `w · penalty`.

They act on the images before the transforms (the `input` key). The article's spectrum of
regularization runs from none (adversarial noise) to learned priors; these are its first family:
they suppress high frequencies, and the bilateral variant spares edges while doing so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fvexp.optvis.objectives import INPUT, Objective
from fvexp.optvis.params import gaussian_blur


def _penalty(name: str, penalty: Callable[[Tensor], Tensor]) -> Objective:
    return Objective(lambda acts: penalty(acts[INPUT]), frozenset({INPUT}), name)


def l1(constant: float = 0.5) -> Objective:
    """Mean |pixel − constant|: pulls the image toward grey, sparse deviations."""
    return _penalty("L1", lambda x: (x - constant).abs().flatten(1).mean(1))


def l2(constant: float = 0.5) -> Objective:
    """Mean (pixel − constant)²: pulls the image toward grey, small deviations."""
    return _penalty("L2", lambda x: (x - constant).pow(2).flatten(1).mean(1))


def total_variation() -> Objective:
    """Mean absolute difference between neighbouring pixels: penalizes every edge and speckle."""
    return _penalty("TV", tv)


def tv(x: Tensor) -> Tensor:
    """Per-image mean absolute difference between horizontal and vertical neighbours."""
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return vertical + (x[..., 1:] - x[..., :-1]).abs().flatten(1).mean(1)


def blur(sigma: float = 1.0) -> Objective:
    """Mean squared distance to the image's own blur (Lucid's `blur_input_each_step`).

    Equivalent to an L2 penalty on each Fourier component scaled by its frequency.
    """
    return _penalty("blur", lambda x: (x - gaussian_blur(x, sigma).detach()).pow(2).flatten(1).mean(1))


def bilateral(sigma_space: float = 1.5, sigma_color: float = 0.1, radius: int = 2) -> Objective:
    """Mean squared distance to the image's bilateral filter: smooths noise but keeps strong edges."""
    def penalty(x: Tensor) -> Tensor:
        return (x - bilateral_filter(x, sigma_space, sigma_color, radius).detach()).pow(2).flatten(1).mean(1)

    return _penalty("bilateral", penalty)


def bilateral_filter(x: Tensor, sigma_space: float, sigma_color: float, radius: int) -> Tensor:
    """Each pixel becomes the mean of its neighbours weighted by distance and by colour similarity."""
    b, c, h, w = x.shape
    side = 2 * radius + 1
    patches = F.unfold(F.pad(x, [radius] * 4, mode="reflect"), side).view(b, c, side * side, h, w)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    space = (offsets[:, None] ** 2 + offsets[None, :] ** 2).flatten() / (2 * sigma_space**2)
    color = (patches - x[:, :, None]).pow(2).sum(1, keepdim=True) / (2 * sigma_color**2)
    weights = torch.exp(-space.view(1, 1, -1, 1, 1) - color)
    return (weights * patches).sum(2) / weights.sum(2)
