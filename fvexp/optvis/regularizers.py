"""Frequency penalties on the image itself: objectives that are subtracted, `objective - 0.1 * l1()`.

As in Lucid, a penalty is positive and is subtracted from what is maximized; the config's
`regularizers.<name>.weight=w` subtracts `w · penalty`.

They act on the images before the transforms (the `input` key). The article's spectrum of
regularization runs from none (adversarial noise) to learned priors; these are its first family:
they suppress high frequencies, and the bilateral variant spares edges while doing so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fvexp.errors import Arg, ArgumentError, Setting
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import load
from fvexp.optvis.objectives import INPUT, Objective, Shapes, inversion
from fvexp.optvis.params import gaussian_blur
from fvexp.optvis.priors import check as check_prior
from fvexp.optvis.priors import load as load_prior
from fvexp.ranges import above, at_least, ranges


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


@ranges(sigma=above(0, "a positive blur sigma in pixels"))
def blur(sigma: float = 1.0) -> Objective:
    """Mean squared distance to the image's own blur (Lucid's `blur_input_each_step`).

    Equivalent to an L2 penalty on each Fourier component scaled by its frequency.
    """
    return _penalty("blur", lambda x: (x - gaussian_blur(x, sigma).detach()).pow(2).flatten(1).mean(1))


@ranges(sigma_space=above(0, "a positive distance sigma in pixels"),
        sigma_color=above(0, "a positive colour-difference sigma"), radius=at_least(0, "0 or more pixels"))
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




def prior(path: str | None = None) -> Objective:
    """Mean squared distance to the image denoised by a learned prior ("regularization by denoising").

    `path` is a prior file from `fvexp task=train_prior`. Its gradient, the residual x − D(x), points
    away from what the denoiser, trained on your images, would remove: noise and unnatural texture.
    """
    if path is None:
        raise ArgumentError("{path}=PRIOR_FILE is needed with {weight}; {hint}", kind="file", value=None,
                            path=Arg(prior, "path"), weight=Setting.PRIOR_WEIGHT, hint=Setting.TRAIN_PRIOR)
    key = Arg(prior, "path")
    net = load_prior(path, key)

    def prepare(model: FeatureModel, shapes: Shapes) -> None:
        check_prior(net, path, key, channels=model.image_channels)
        net.to(model.device)

    def penalty(x: Tensor) -> Tensor:
        check_prior(net, path, key, size=max(x.shape[-2:]))
        with torch.no_grad():
            denoised = net(x)
        return (x - denoised).pow(2).flatten(1).mean(1)

    return Objective(lambda acts: penalty(acts[INPUT]), frozenset({INPUT}), "prior", (prepare,))


def feature_stats(images: Sequence[str] = (), layers: Sequence[str] = (), size: int = 224) -> Objective:
    """Match the sorted activations of each channel to those of natural `images` (VITAL, Fel et al. 2023).

    Per channel, the visualization's values over all positions, sorted, are pulled towards the mean
    sorted values of the reference images at `layers`: the distribution of a natural image's
    response, not only its strongest value. The application fills in the unit's top dataset examples
    and its layer when it has an image folder. Each layer's distance is divided by the reference's mean square.
    """
    if not images or not layers:
        raise ArgumentError("{piece} needs reference images and layers: set {data} (the unit's top examples there "
                            "and the unit's layer are used), or {images}=[...] and {layers}=[...]", kind="images",
                            value=list(images), piece=Arg(feature_stats), data=Setting.EXAMPLES_FOLDER,
                            images=Arg(feature_stats, "images"), layers=Arg(feature_stats, "layers"))
    reference: dict[str, Tensor] = {}

    def prepare(model: FeatureModel, shapes: Shapes) -> None:
        flat = [name for name in layers if len(shapes[name]) != 4]
        if flat:
            raise ArgumentError("{layers}: {layer} gives {shape} outputs, and sorted feature statistics need (batch, "
                                "channels, h, w) maps", kind="layer", value=flat[0], layer=flat[0],
                                shape=tuple(shapes[flat[0]]), layers=Arg(feature_stats, "layers"))
        batch = torch.cat([load(i, size, key=Arg(feature_stats, "images")) for i in images])
        with torch.no_grad(), model.reading(list(layers)) as read:
            acts = read(batch.to(model.device))
        reference.update({name: acts[name].flatten(2).sort(2).values.mean(0) for name in layers})

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        total = torch.zeros((), device=next(iter(acts.values())).device)
        for name in layers:
            mine, target = acts[name].flatten(2).sort(2).values, reference[name]
            if target.shape[-1] != mine.shape[-1]:  # transforms changed the map size: compare the quantiles
                target = F.interpolate(target[None], size=mine.shape[-1], mode="linear", align_corners=True)[0]
            total = total + (mine - target).pow(2).flatten(1).mean(1) / target.pow(2).mean().clamp(min=1e-12)
        return total

    return Objective(value, frozenset(layers), f"feature stats ({len(images)} images)", (prepare,))


def path(image: str | None = None, layers: Sequence[str] = (), size: int = 224) -> Objective:
    """Keep the activations at `layers` near those of a start `image` (feature accentuation, Hamblin et al. 2024).

    The sum of each layer's normalized squared distance (an `inversion` of the image per layer), so
    that an accentuated image reaches the unit along the path of the photo it started from. With
    a start image the application fills in that image and the layers on the way to the unit.
    """
    if image is None or not layers:
        raise ArgumentError("{piece} needs a start image and layers: set {start} (the layers up to the unit's are "
                            "used), or {image} and .layers", kind="image", value=image, piece=Arg(path),
                            start=Setting.START_IMAGE, image=Arg(path, "image"))
    load(image, size, key=Arg(path, "image"))  # a bad file fails here, named by its argument
    kept = [inversion(name, image, size) for name in layers]
    return Objective(lambda acts: -sum(term(acts) for term in kept), frozenset().union(*(t.layers for t in kept)),
                     f"path ({len(layers)} layers)", tuple(p for term in kept for p in term.preparations))
