"""Transformation robustness: small random, differentiable transforms applied before every step.

An image that still activates the unit after being jittered, scaled and rotated cannot rely on
exact pixel patterns, which removes much of the high-frequency "optical illusion" noise.
Each piece is a callable `(image, generator) -> image`; randomness comes only from the generator
the optimization core seeds, so a run is reproducible. `min_output(size)` is the smallest image a
piece can return for an input of `size`, which lets fvexp reject image sizes that are too small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fvexp.ranges import Range, at_least, ranges

WIDTH = at_least(0, "0 or more pixels (a negative pad would crop)")
SD = at_least(0, "0 or more (0: off)")


def _choice(options: Sequence[float], generator: torch.Generator) -> float:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


@ranges(width=WIDTH)
class Pad:
    """Pad every side by `width` pixels (a constant grey by default) so edges can move inward."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5) -> None:
        self.width, self.mode, self.value = width, mode, value

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        value = self.value if self.mode == "constant" else None
        return F.pad(image, [self.width] * 4, mode=self.mode, value=value)

    def min_output(self, size: int) -> int:
        return size + 2 * self.width


@ranges(pixels=at_least(0, "0 or more pixels of jitter"))
class Jitter:
    """Crop at a random offset of 0..`pixels`, shrinking the image by `pixels` (Lucid's jitter)."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        dy, dx = torch.randint(self.pixels + 1, (2,), generator=generator).tolist()
        h, w = image.shape[-2:]
        return image[..., dy : dy + h - self.pixels, dx : dx + w - self.pixels]

    def min_output(self, size: int) -> int:
        return size - self.pixels


@ranges(factors=Range(lambda factors: all(f > 0 for f in factors), "positive scale factors"))
class Scale:
    """Resize by a factor drawn from `factors` (bilinear)."""

    def __init__(self, factors: Sequence[float]) -> None:
        self.factors = list(factors)

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        factor = _choice(self.factors, generator)
        if factor == 1:
            return image
        size = [max(1, round(side * factor)) for side in image.shape[-2:]]
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    def min_output(self, size: int) -> int:
        return max(1, round(size * min(self.factors)))


class Rotate:
    """Rotate about the centre by an angle in degrees drawn from `degrees` (bilinear, zeros outside)."""

    def __init__(self, degrees: Sequence[float]) -> None:
        self.degrees = list(degrees)

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        angle = math.radians(_choice(self.degrees, generator))
        return image if angle == 0 else _rotated(image, angle, list(image.shape[-2:]))

    def min_output(self, size: int) -> int:
        return size


class Affine:
    """Scale by a factor from `factors` and rotate by an angle from `degrees` in one bilinear resampling.

    `Compose` puts one in place of a `Scale` followed by a `Rotate`: the same draws from the generator
    and the same geometry, but the image is interpolated once instead of twice, which is both sharper
    and cheaper (the resampling's backward pass is most of fvexp's own cost per step).
    """

    def __init__(self, factors: Sequence[float] = (1.0,), degrees: Sequence[float] = (0.0,)) -> None:
        self.factors, self.degrees = list(factors), list(degrees)

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        factor = _choice(self.factors, generator)
        angle = math.radians(_choice(self.degrees, generator))
        size = [max(1, round(side * factor)) for side in image.shape[-2:]]
        if angle == 0:  # a plain resize (or nothing), exactly as Scale does it
            return image if factor == 1 else F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return _rotated(image, angle, size)

    def min_output(self, size: int) -> int:
        return max(1, round(size * min(self.factors)))


def _rotated(image: Tensor, angle: float, size: list[int]) -> Tensor:
    """`image` rotated by `angle` radians about its centre and sampled at `size` (bilinear, zeros outside).

    The sampling grid is F.affine_grid's, bit for bit, but made on the image's device from Python
    numbers: a theta tensor built on the host would be a copy to a GPU, which waits for its queued work.
    Each colour channel is sampled as an image of its own, which gives the same numbers: the CPU
    kernel's backward pass, most of fvexp's own cost per step, runs one thread per image, so a
    batch of one would leave all cores but one idle.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    (n, c, *_), (h, w) = image.shape, size
    xs = torch.linspace(-1, 1, w, device=image.device, dtype=image.dtype) * (w - 1) / w  # pixel centres
    ys = torch.linspace(-1, 1, h, device=image.device, dtype=image.dtype)[:, None] * (h - 1) / h
    grid = torch.stack([(xs * cos + ys * -sin + 0.0), (xs * sin + ys * cos + 0.0)], -1)
    channels = image.reshape(n * c, 1, *image.shape[-2:])
    return F.grid_sample(channels, grid.expand(n * c, h, w, 2), mode="bilinear", align_corners=False).view(n, c, h, w)


@ranges(width=WIDTH)
class Crop:
    """Remove `width` pixels from every side, e.g. to take off the padding added earlier."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        w = self.width
        return image[..., w:-w, w:-w] if w else image

    def min_output(self, size: int) -> int:
        return size - 2 * self.width


@ranges(sd=SD)
class ColorShift:
    """Scale and offset each colour channel of each image by random amounts of sd `sd` (Ghiasi et al. 2022).

    A vision transformer's unit can otherwise be driven by one exact colour balance; a shifted copy
    must still excite it.
    """

    def __init__(self, sd: float = 0.1) -> None:
        self.sd = sd

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        scale, offset = (self.sd * torch.randn(2, *image.shape[:2], 1, 1, generator=generator)).to(image.device)
        return image * (1 + scale) + offset

    def min_output(self, size: int) -> int:
        return size


@ranges(sd=SD)
class Noise:
    """Add Gaussian pixel noise of sd `sd` (Ghiasi et al. 2022): a unit must respond to more than exact pixels."""

    def __init__(self, sd: float = 0.05) -> None:
        self.sd = sd

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        return image + self.sd * torch.randn(image.shape, generator=generator).to(image.device)

    def min_output(self, size: int) -> int:
        return size


Piece = Pad | Jitter | Scale | Rotate | Affine | Crop | ColorShift | Noise


class Compose:
    """Apply `pieces` in order; none at all is the identity.

    `pieces` may be a mapping of names to pieces (`pad`, `jitter`, ...) so that an ablation drops one by
    setting it to None; the order is the mapping's. With `fuse` (the default) a `Scale` directly followed
    by a `Rotate` becomes one `Affine`: one resampling a step instead of two. `fuse=False` keeps
    them apart, as fvexp did before (the pixels of older runs).
    """

    def __init__(self, pieces: Mapping[str, Piece | None] | Sequence[Piece] = (), fuse: bool = True) -> None:
        values = pieces.values() if isinstance(pieces, Mapping) else pieces
        self.pieces: list[Piece] = []
        for piece in values:
            if piece is None:
                continue
            previous = self.pieces[-1] if self.pieces else None
            if fuse and isinstance(piece, Rotate) and type(previous) is Scale:
                self.pieces[-1] = Affine(previous.factors, piece.degrees)
            else:
                self.pieces.append(piece)

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        for piece in self.pieces:
            image = piece(image, generator)
        return image

    def min_output(self, size: int) -> int:
        for piece in self.pieces:
            size = piece.min_output(size)
        return size


def standard(fuse: bool = True) -> Compose:
    """Lucid's standard transforms, as in conf/transforms/standard.yaml: the yardstick for robustness."""
    return Compose([Pad(12), Jitter(8), Scale([1 + (i - 5) / 50 for i in range(11)]),
                    Rotate([*range(-10, 11), 0, 0, 0, 0, 0]), Jitter(4)], fuse=fuse)
