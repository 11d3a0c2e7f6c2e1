"""Transforms are differentiable, seeded, and report the smallest image they can return."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fvexp.optvis.transforms import Compose, Crop, Jitter, Pad, Rotate, Scale, _rotated, standard
from tests.conftest import ROOT


def preset(name: str) -> Compose:
    node = OmegaConf.load(ROOT / "conf" / "transforms" / f"{name}.yaml")
    return instantiate({"_target_": "fvexp.optvis.transforms.Compose", "pieces": node.pieces})


def test_the_robustness_yardstick_is_the_standard_preset() -> None:
    image, config = torch.rand(1, 3, 64, 64), preset("standard")
    for seed in range(5):
        assert torch.equal(standard()(image, torch.Generator().manual_seed(seed)),
                           config(image, torch.Generator().manual_seed(seed)))


def test_a_piece_set_to_null_is_dropped() -> None:
    node = OmegaConf.load(ROOT / "conf" / "transforms" / "standard.yaml")
    node.pieces.rotate = None
    transforms = instantiate({"_target_": "fvexp.optvis.transforms.Compose", "pieces": node.pieces})
    assert [type(p).__name__ for p in transforms.pieces] == ["Pad", "Jitter", "Scale", "Jitter"]


@pytest.mark.parametrize("name", ["none", "standard", "distill"])
def test_presets_are_differentiable_and_never_smaller_than_min_output(name: str) -> None:
    transforms = preset(name)
    image = torch.rand(2, 3, 128, 128, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(40):
        out = transforms(image, generator)
        assert out.shape[:2] == (2, 3)
        assert min(out.shape[-2:]) >= transforms.min_output(128)
        sizes.add(tuple(out.shape[-2:]))
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert (len(sizes) > 1) == (name != "none")


def test_same_seed_same_transforms() -> None:
    image = torch.rand(1, 3, 64, 64)
    runs = [preset("standard")(image, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*runs)
    other = preset("standard")(image, torch.Generator().manual_seed(8))
    assert other.shape != runs[0].shape or not torch.equal(other, runs[0])


def test_pieces() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 20, 20)
    padded = Pad(3)(image, g)
    assert padded.shape[-1] == 26 and padded[0, :, 0, 0].tolist() == [0.5, 0.5, 0.5]
    assert Crop(3)(padded, g).equal(image)
    assert Jitter(4)(image, g).shape[-1] == 16
    assert Scale([0.5])(image, g).shape[-1] == 10
    assert Rotate([0])(image, g).equal(image)
    assert torch.allclose(Rotate([90])(image, g), image.rot90(1, dims=(-2, -1)), atol=1e-5)
    distill = preset("distill")
    assert distill.min_output(224) == round((224 + 32 - 16) * 0.95) - 8 - 32


def test_scale_then_rotate_is_resampled_once_with_the_same_draws_and_sizes() -> None:
    """Compose fuses an adjacent Scale and Rotate into one Affine: same geometry, one interpolation."""
    from fvexp.optvis.transforms import Affine

    fused, apart = preset("standard"), standard(fuse=False)
    assert [type(p).__name__ for p in fused.pieces] == ["Pad", "Jitter", "Affine", "Jitter"]
    assert [type(p).__name__ for p in apart.pieces] == ["Pad", "Jitter", "Scale", "Rotate", "Jitter"]
    assert fused.min_output(224) == apart.min_output(224) == round(240 * 0.9) - 4
    ramp = torch.linspace(0, 3, 40)
    image = torch.sin(ramp[:, None] + 2 * ramp[None, :]).expand(1, 3, 40, 40)  # smooth: little lost to blur
    for seed in range(6):  # the same draws, so the same output sizes and geometry, as two pieces
        one = Compose([Scale([0.9, 1.1]), Rotate([-10, 10])])(image, torch.Generator().manual_seed(seed))
        two = Compose([Scale([0.9, 1.1]), Rotate([-10, 10])], fuse=False)(image, torch.Generator().manual_seed(seed))
        assert one.shape == two.shape and (one - two).abs().mean() < 0.02
    g = torch.Generator()
    assert Affine([0.5], [0])(image, g).equal(Scale([0.5])(image, g))  # no rotation: exactly Scale
    assert Affine([1.0], [0])(image, g) is image
    assert torch.allclose(Affine([1.0], [90])(image, g), image.rot90(1, dims=(-2, -1)), atol=1e-5)


def test_rotation_samples_each_channel_alone_and_gives_affine_grids_numbers_and_gradients() -> None:
    """Per-channel sampling (for the CPU's threads) must not change a pixel or a gradient of torch's affine_grid."""
    image = torch.rand(2, 3, 30, 34, requires_grad=True)
    angle, size = 0.3, [33, 29]
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [2, 3, *size], align_corners=False)
    expected = torch.nn.functional.grid_sample(image, grid, mode="bilinear", align_corners=False)
    weights = torch.rand_like(expected)
    rotated = _rotated(image, angle, size)
    assert rotated.equal(expected)
    assert torch.autograd.grad((rotated * weights).sum(), image)[0].equal(
        torch.autograd.grad((expected * weights).sum(), image)[0])
