"""Numbers that let ablations be compared without eyeballing: how strong, robust, smooth, diverse, fast.

All are computed on the final images after a run and logged as MLflow metrics and `metrics.json`.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from fvexp.optvis.features import FeatureModel
from fvexp.optvis.objectives import INPUT, Objective, gram_cosines
from fvexp.optvis.regularizers import tv
from fvexp.optvis.transforms import standard

ROBUSTNESS_DRAWS = 16


@torch.no_grad()
def quality(model: FeatureModel, objective: Objective, images: Tensor, values: list[float],
            seed: int, gram_layer: str | None) -> dict[str, float]:
    """Every metric of a finished run; `gram_layer` (a spatial layer) for the batch's Gram cosine.

    Robustness is the objective averaged over random draws of Lucid's standard transforms, whatever
    the run itself used, so that every arm of an ablation is measured with the same yardstick.
    """
    transforms = standard()
    layers = sorted({*objective.network_layers, *([gram_layer] if gram_layer else [])})
    generator = torch.Generator().manual_seed(seed + 1)  # other draws than the optimization saw
    with model.reading(layers) as read:
        plain = read(images)
        metrics = {
            "objective_untransformed": objective({**plain, INPUT: images}).mean().item(),
            "objective_transformed": sum(objective({**read(transforms(images, generator)), INPUT: images}).mean().item()
                                         for _ in range(ROBUSTNESS_DRAWS)) / ROBUSTNESS_DRAWS,
            "high_frequency_energy": high_frequency_energy(images),
            "spectral_slope": spectral_slope(images),
            "total_variation": tv(images).mean().item(),
        }
    if len(images) > 1 and gram_layer and plain[gram_layer].dim() == 4:
        cosines = gram_cosines(plain[gram_layer])
        n = len(images)
        metrics["gram_cosine"] = ((cosines.sum() - cosines.diagonal().sum()) / (n * (n - 1))).item()
    if values:
        metrics["steps_to_90pct"] = float(steps_to_fraction(values, 0.9))
    return metrics


def power_spectrum(images: Tensor) -> tuple[Tensor, Tensor]:
    """Mean power of the grey-level images' spectrum and each coefficient's radius (cycles/pixel)."""
    grey = images.mean(1)
    grey = grey - grey.mean((1, 2), keepdim=True)
    h, w = grey.shape[-2:]
    power = torch.fft.rfft2(grey).abs().pow(2).mean(0)
    radius = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2).sqrt()
    return power, radius


def high_frequency_energy(images: Tensor) -> float:
    """Share of spectral power beyond half the Nyquist radius (0.25 cycles/pixel): noise shows up here."""
    power, radius = power_spectrum(images)
    return (power[radius > 0.25].sum() / power[radius > 0].sum().clamp(min=1e-12)).item()


def spectral_slope(images: Tensor, bins: int = 24) -> float:
    """Slope of log power against log frequency (radially averaged); natural images lie near −2."""
    power, radius = power_spectrum(images)
    edges = torch.logspace(torch.log10(torch.tensor(1.0 / radius.shape[0])), torch.log10(torch.tensor(0.5)), bins + 1)
    x, y = [], []
    for low, high in itertools.pairwise(edges):
        inside = (radius >= low) & (radius < high)
        if inside.any():
            x.append(torch.log(radius[inside].mean()))
            y.append(torch.log(power[inside].mean().clamp(min=1e-20)))
    x_t, y_t = torch.stack(x), torch.stack(y)
    x_t = x_t - x_t.mean()
    return ((x_t * (y_t - y_t.mean())).sum() / x_t.pow(2).sum()).item()


def steps_to_fraction(values: list[float], fraction: float) -> int:
    """First step whose smoothed objective covers `fraction` of the way from the start to the end.

    Smoothing over 5 % of the run keeps transform noise from deciding the answer.
    """
    history = torch.tensor(values)
    start, end = history[0].item(), smoothed(values)[-1].item()
    if end <= start:
        return len(values)
    return steps_to_value(values, start + fraction * (end - start)) or len(values)


def steps_to_value(values: list[float], target: float) -> int | None:
    """First step whose smoothed objective reaches `target`; None if it never does.

    With one target for every arm of an ablation (say 90 % of the best arm's final objective),
    an arm that converges fast to a worse objective no longer looks as fast as a better one.
    """
    smooth = smoothed(values)
    reached = (smooth >= target).nonzero()
    return int(reached[0]) + len(values) - len(smooth) + 1 if len(reached) else None


def smoothed(values: list[float]) -> Tensor:
    """The running mean over 5 % of the run (its last `len - window + 1` points)."""
    history = torch.tensor(values, dtype=torch.float64)
    window = max(1, len(values) // 20)
    return history.unfold(0, window, 1).mean(1)
