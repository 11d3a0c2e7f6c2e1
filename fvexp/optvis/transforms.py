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


def _choice(options: Sequence[float], generator: torch.Generator) -> float:
    return options[int(torch.randint(len(options), (1,), generator=generator))]


class Pad:
    """Pad every side by `width` pixels (a constant grey by default) so edges can move inward."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5) -> None:
        self.width, self.mode, self.value = width, mode, value

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        value = self.value if self.mode == "constant" else None
        return F.pad(image, [self.width] * 4, mode=self.mode, value=value)

    def min_output(self, size: int) -> int:
        return size + 2 * self.width


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
        if angle == 0:
            return image
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], device=image.device, dtype=image.dtype)
        grid = F.affine_grid(theta.expand(image.shape[0], 2, 3), list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", align_corners=False)

    def min_output(self, size: int) -> int:
        return size


class Crop:
    """Remove `width` pixels from every side, e.g. to take off the padding added earlier."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        w = self.width
        return image[..., w:-w, w:-w] if w else image

    def min_output(self, size: int) -> int:
        return size - 2 * self.width


Piece = Pad | Jitter | Scale | Rotate | Crop


class Compose:
    """Apply `pieces` in order; none at all is the identity (`transforms=none`).

    Configs name the pieces (`pad`, `jitter`, ...) so that an ablation drops one by setting it to
    null, e.g. `transforms.pieces.rotate=null`.
    """

    def __init__(self, pieces: Mapping[str, Piece | None] | Sequence[Piece] = ()) -> None:
        values = pieces.values() if isinstance(pieces, Mapping) else pieces
        self.pieces = [piece for piece in values if piece is not None]

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        for piece in self.pieces:
            image = piece(image, generator)
        return image

    def min_output(self, size: int) -> int:
        for piece in self.pieces:
            size = piece.min_output(size)
        return size


def standard() -> Compose:
    """Lucid's standard transforms, as in conf/transforms/standard.yaml: the yardstick for robustness."""
    return Compose([Pad(12), Jitter(8), Scale([1 + (i - 5) / 50 for i in range(11)]),
                    Rotate([*range(-10, 11), 0, 0, 0, 0, 0]), Jitter(4)])
