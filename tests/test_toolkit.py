"""The article's toolkit: objectives, regularizers, parameterizations, descent directions and metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fvexp.errors import FvexpError
from fvexp.optvis import objectives, regularizers
from fvexp.optvis.metrics import high_frequency_energy, spectral_slope, steps_to_fraction
from fvexp.optvis.objectives import INPUT
from fvexp.optvis.optimizers import SteepestDescent, decorrelate
from fvexp.optvis.params import CPPN, Fourier, LaplacianPyramid, LowRes, Maco, Pixel, Shared, gaussian_blur

torch.manual_seed(0)
ACTS = {"a": torch.randn(3, 4, 5, 5)}


def noise_with_slope(size: int, power: float, seed: int = 0) -> torch.Tensor:
    """Grey noise whose amplitude spectrum falls as 1/f^power (power spectrum slope −2·power)."""
    from fvexp.optvis.params import spectrum_scale

    g = torch.Generator().manual_seed(seed)
    spectrum = torch.complex(torch.randn(1, 1, size, size // 2 + 1, generator=g),
                             torch.randn(1, 1, size, size // 2 + 1, generator=g))
    image = torch.fft.irfft2(spectrum * spectrum_scale(size, power), s=(size, size))
    return image.expand(1, 3, size, size)


def test_direction_is_dot_times_floored_cosine_power() -> None:
    v = [1.0, -1.0, 0.5, 0.0]
    act = ACTS["a"]
    dot = torch.einsum("bchw,c->bhw", act, torch.tensor(v))
    assert torch.allclose(objectives.direction("a", v)(ACTS), dot.mean((1, 2)))
    cos = dot / (1e-4 + act.norm(dim=1)) / (1e-4 + torch.tensor(v).norm())
    expected = (dot * cos.clamp(min=0.1) ** 2).mean((1, 2))
    assert torch.allclose(objectives.direction("a", v, cossim_pow=2)(ACTS), expected, atol=1e-6)


def test_direction_neuron_is_the_directions_objective_at_the_centre_alone() -> None:
    v = [1.0, -1.0, 0.5, 0.0]
    act = ACTS["a"]
    h, w = act.shape[-2:]
    centre = {"a": act[:, :, h // 2 : h // 2 + 1, w // 2 : w // 2 + 1]}  # a 1×1 map: the centre position alone
    for power in (0.0, 1.0):
        assert torch.allclose(objectives.direction_neuron("a", v, power)(ACTS),
                              objectives.direction("a", v, power)(centre), atol=1e-6)
    at = {"a": act[:, :, 0:1, 1:2]}
    assert torch.allclose(objectives.direction_neuron("a", v, 1.0, x=1, y=0)(ACTS),
                          objectives.direction("a", v, 1.0)(at))


def test_direction_checks_its_length_and_random_direction_is_seeded(model) -> None:
    shapes = {"_blocks.8": torch.Size([1, 112, 7, 7])}
    for piece in (objectives.direction, objectives.direction_neuron):
        with pytest.raises(FvexpError, match=r"vector has 2 values but layer '_blocks\.8' has 112 channels"):
            piece("_blocks.8", [1.0, 2.0]).prepare(model, shapes)
    with pytest.raises(FvexpError, match=r"position x=9, y=None is outside layer '_blocks\.8', whose map is 7x7"):
        objectives.direction_neuron("_blocks.8", [1.0] * 112, x=9).prepare(model, shapes)
    acts = {"a": torch.randn(2, 6, 3, 3)}
    first, again, other = (objectives.random_direction("a", seed=s) for s in (1, 1, 2))
    for o in (first, again, other):
        o.prepare(model, {"a": acts["a"].shape})
    assert torch.equal(first(acts), again(acts)) and not torch.equal(first(acts), other(acts))


def test_arithmetic_interpolation_and_logsumexp() -> None:
    c0, c1 = objectives.channel("a", 0), objectives.channel("a", 1)
    combo = objectives.combine([{"weight": 1.0, "objective": c0}, {"weight": -2.0, "objective": c1}])
    assert torch.allclose(combo(ACTS), c0(ACTS) - 2 * c1(ACTS))
    with pytest.raises(FvexpError, match=r"terms\[\]\.weight must be a number, got 'x'"):
        objectives.combine([{"weight": "x", "objective": c0}])
    mix = objectives.interpolate(c0, c1)(ACTS)
    assert torch.allclose(mix, torch.stack([c0(ACTS)[0], (c0(ACTS)[1] + c1(ACTS)[1]) / 2, c1(ACTS)[2]]))
    logits = {"_fc": torch.randn(2, 1000)}
    assert torch.allclose(objectives.class_logsumexp("goldfish", "_fc")(logits), logits["_fc"].log_softmax(1)[:, 1])


def test_diversity_is_zero_for_different_and_negative_for_equal_images() -> None:
    same = {"a": ACTS["a"][:1].expand(3, -1, -1, -1)}
    assert torch.allclose(objectives.diversity("a")(same), torch.full((3,), -2.0))
    separate = torch.zeros(2, 2, 3, 3)
    separate[0, 0], separate[1, 1] = 1, 1  # orthogonal Gram matrices
    assert torch.allclose(objectives.diversity("a")({"a": separate}), torch.zeros(2))


def test_alignment_penalizes_neighbours_that_differ() -> None:
    smooth = {"a": torch.ones(4, 2, 3, 3) * torch.arange(4.0).view(4, 1, 1, 1) * 0.1}
    rough = {"a": torch.ones(4, 2, 3, 3) * torch.tensor([0.0, 1.0, 0.0, 1.0]).view(4, 1, 1, 1)}
    assert objectives.alignment("a")(smooth).sum() > objectives.alignment("a")(rough).sum()
    assert objectives.alignment("a")({"a": torch.ones(3, 2, 3, 3)}).abs().sum() == 0


def test_style_and_inversion_match_their_reference(model, tmp_path: Path) -> None:
    import skimage.data
    from PIL import Image

    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    from fvexp.optvis.images import load

    reference, other = load(path, 96, key="test"), torch.rand(1, 3, 96, 96)
    for objective in (objectives.inversion("_blocks.4", str(path), 96),
                      objectives.style(["_blocks.2", "_blocks.4"], str(path), 96)):
        objective.prepare(model, {})
        with model.reading(sorted(objective.layers)) as read:
            assert objective(read(reference)).item() == pytest.approx(0.0, abs=1e-6)
            assert objective(read(other)).item() < -0.01
    with pytest.raises(FvexpError, match=r"^image: the image '/no/such\.png' does not exist"):
        objectives.inversion("_blocks.4", "/no/such.png", 96).prepare(model, {})


def test_regularizers_penalize_noise_more_than_smooth_images() -> None:
    smooth = gaussian_blur(torch.rand(1, 3, 32, 32), 3.0)
    noisy = torch.rand(1, 3, 32, 32)
    for term in (regularizers.total_variation(), regularizers.blur(), regularizers.bilateral()):
        assert term({INPUT: noisy}).item() > term({INPUT: smooth}).item() >= 0  # penalties: subtracted
    grey = torch.full((1, 3, 8, 8), 0.5)
    assert regularizers.l1()({INPUT: grey}).item() == 0
    assert regularizers.l2()({INPUT: grey + 0.1}).item() == pytest.approx(0.01)


def test_bilateral_filter_keeps_an_edge_that_blur_softens() -> None:
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1.0
    kept = regularizers.bilateral_filter(edge, 1.5, 0.1, 2)
    assert (kept - edge).abs().max() < 1e-3 and (gaussian_blur(edge, 1.5) - edge).abs().max() > 0.3


@pytest.mark.parametrize("make", [
    lambda b, s: LowRes(b, s, 4), lambda b, s: LaplacianPyramid(b, s), lambda b, s: CPPN(b, s),
    lambda b, s: Maco(b, s), lambda b, s: Shared(b, s, base=Fourier), lambda b, s: Pixel(b, s, grad_blur=1.0)])
def test_new_parameterizations_are_rgb_images_with_gradients(make) -> None:
    torch.manual_seed(0)
    param = make(3, 32)
    images = param()
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    (images[:, 0] * torch.rand_like(images[:, 0])).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in param.parameters())


def test_maco_keeps_its_magnitude_and_lowres_is_smooth() -> None:
    maco = Maco(1, 32)
    magnitude = torch.fft.rfft2(maco.raw()).abs()
    inner = (slice(None), slice(1, -1))  # columns 0 and Nyquist of a real FFT are not free: skip them
    ratio = magnitude[0, 0][inner] / maco.magnitude[0][inner]
    assert ratio.std() / ratio.mean() < 1e-3  # only the phase changed: the magnitude is the fixed one, rescaled
    assert high_frequency_energy(LowRes(1, 64, 8, sd=1.0)()) < 0.1 < high_frequency_energy(Pixel(1, 64, sd=1.0)())


def test_shared_parts_make_neighbouring_images_alike() -> None:
    torch.manual_seed(0)
    shared = Shared(4, 32, base=lambda batch, size, channels: Fourier(batch, size, sd=0.0, channels=channels))
    for part in shared.shared:
        torch.nn.init.normal_(part.coarse)
    raw = shared.raw()
    assert (raw[0] - raw[1]).abs().mean() < (raw[0] - raw[3]).abs().mean()


def test_gradient_blur_removes_high_frequencies_from_the_gradient() -> None:
    param = Pixel(1, 32, grad_blur=1.5)
    (param() * torch.randn(1, 3, 32, 32)).sum().backward()
    raw = Pixel(1, 32)
    (raw() * torch.randn(1, 3, 32, 32)).sum().backward()
    assert high_frequency_energy(param.pixels.grad) < 0.5 * high_frequency_energy(raw.pixels.grad)


def test_steepest_descent_directions() -> None:
    p = torch.nn.Parameter(torch.zeros(1, 3, 16, 16))
    p.grad = torch.randn(1, 3, 16, 16)
    SteepestDescent([p], lr=0.1, metric="linf").step()
    assert torch.allclose(p.detach().abs(), torch.full_like(p, 0.1))  # every pixel moves by lr
    q = torch.nn.Parameter(torch.zeros(1, 3, 16, 16))
    q.grad = p.grad.clone()
    SteepestDescent([q], lr=0.1, metric="l2").step()
    assert q.detach().pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-4)
    assert torch.allclose(q.detach() / q.detach().norm(), -p.grad / p.grad.norm(), atol=1e-6)
    white = torch.randn(1, 3, 32, 32)
    assert high_frequency_energy(decorrelate(white, 1.0)) < 0.1 < high_frequency_energy(white)
    with pytest.raises(FvexpError, match=r"unknown metric 'l3'; use one of l2, linf, decorrelated"):
        SteepestDescent([p], metric="l3")


def test_spectrum_metrics() -> None:
    white = torch.rand(4, 3, 64, 64)
    assert high_frequency_energy(white) == pytest.approx(1 - math.pi * 0.25**2, abs=0.03)
    assert spectral_slope(white) == pytest.approx(0.0, abs=0.2)
    assert spectral_slope(noise_with_slope(128, 1.0)) == pytest.approx(-2.0, abs=0.25)
    assert high_frequency_energy(noise_with_slope(128, 1.0)) < 0.25  # ln(0.6/0.25) / ln(0.6/(1/128)) of 1/f²


def test_steps_to_fraction() -> None:
    assert steps_to_fraction([0.0] * 10 + [10.0] * 90, 0.9) == 15
    assert steps_to_fraction([float(i) for i in range(100)], 0.9) <= 92
    assert steps_to_fraction([5.0, 4.0, 3.0], 0.9) == 3  # never improved: all steps
