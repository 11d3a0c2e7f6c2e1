"""Image parameterizations: the space the optimizer walks in, mapped to RGB images in [0, 1].

All follow Lucid unless said otherwise. A parameterization is an `nn.Module` built with the batch
size and image side (and the channel count of the model's input, 3 unless the model takes another);
`raw()` gives unbounded values of shape (batch, channels, size, size) and `forward()` turns them
into images through optional colour decorrelation (RGB only) and a sigmoid. The choice of space is
a preconditioner: it changes which direction is steepest, and so what the optimizer finds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvexp.errors import Arg, ArgumentError, Setting
from fvexp.optvis.priors import load as load_prior
from fvexp.ranges import Range, at_least, ranges

# Square root of the colour covariance of ImageNet, from its SVD (Lucid's `color_correlation_svd_sqrt`),
# normalized by its largest column norm so that decorrelation never amplifies a channel.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


@cache
def color_correlation(device: torch.device) -> Tensor:
    """The colour matrix on `device`, copied there once: a copy per step would stall a GPU's queue."""
    return COLOR_CORRELATION.to(device)


def to_rgb(t: Tensor, decorrelate: bool) -> Tensor:
    """Map unbounded values to [0, 1] RGB, first mixing decorrelated colour components if asked.

    Optimizing in decorrelated colour space makes each parameter move a natural colour direction,
    which the article finds removes the washed-out, grey-green look of plain RGB optimization.
    """
    if decorrelate and t.shape[1] == 3:  # ImageNet's colour statistics mean nothing for other channels
        t = torch.einsum("dc,bchw->bdhw", color_correlation(t.device), t)
    return torch.sigmoid(t)


def frequencies(size: int) -> Tensor:
    """Radial frequency in cycles per pixel of each coefficient of a `size`×`size` real FFT."""
    return (torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.rfftfreq(size)[None, :] ** 2).sqrt()


def spectrum_scale(size: int, decay_power: float) -> Tensor:
    """Lucid's 1/f scaling: 1 / max(f, 1/size)^decay_power, times sqrt(size²) for unit-variance pixels."""
    return frequencies(size).clamp(min=1.0 / size).pow(-decay_power) * size


class Param(nn.Module):
    """Base of every parameterization: subclasses define `raw()`.

    `images_first` says that each of its tensors holds the batch's images along its first dimension,
    which Adam's per-image second moment (`optimizers.Adam(per_image=True)`) relies on; a
    parameterization whose values are shared across the images, or folded with them, sets it False.
    """

    images_first = True

    def __init__(self, decorrelate: bool) -> None:
        super().__init__()
        self.decorrelate = decorrelate

    def raw(self) -> Tensor:
        raise NotImplementedError

    def forward(self) -> Tensor:
        return to_rgb(self.raw(), self.decorrelate)


@ranges(grad_blur=at_least(0, "0 (off) or a blur sigma in pixels"))
class Pixel(Param):
    """One free parameter per pixel and colour: the naive basis, prone to high-frequency noise.

    `grad_blur` > 0 blurs each gradient with a Gaussian of that sigma (pixels) before the optimizer
    sees it: the "gradient blurring" preconditioner, which slows high frequencies without forbidding them.
    """

    def __init__(self, batch: int, size: int, sd: float = 0.01, decorrelate: bool = False,
                 grad_blur: float = 0.0, channels: int = 3) -> None:
        super().__init__(decorrelate)
        self.pixels = nn.Parameter(torch.randn(batch, channels, size, size) * sd)
        if grad_blur > 0:
            self.pixels.register_hook(lambda grad: gaussian_blur(grad, grad_blur))

    def raw(self) -> Tensor:
        return self.pixels


class Fourier(Param):
    """Image as a spectrum whose frequencies are scaled by 1/f^decay_power (Lucid's `fft_image`).

    Scaling each frequency by the inverse of its magnitude whitens the natural-image spectrum, so
    that gradient steps change low and high frequencies alike: a preconditioner that makes
    optimization faster and the results less noisy.
    """

    def __init__(self, batch: int, size: int, sd: float = 0.01, decay_power: float = 1.0,
                 decorrelate: bool = True, channels: int = 3) -> None:
        super().__init__(decorrelate)
        # Lucid divides the image by 4; dividing the scale instead gives the same numbers (a power of two
        # commutes with every rounding of the linear FFT) with one pass over the image fewer, forward and back
        self.register_buffer("scale", spectrum_scale(size, decay_power) / 4.0)
        self.spectrum = nn.Parameter(torch.randn(batch, channels, *self.scale.shape, 2) * sd)
        self.size = size

    def raw(self) -> Tensor:
        return torch.fft.irfft2(torch.view_as_complex(self.spectrum) * self.scale, s=(self.size, self.size))


@ranges(factor=at_least(1, "a downscaling factor of at least 1 (1: full resolution)"),
        frames=at_least(1, "at least 1 frame (unset: one per image)"))
class LowRes(Param):
    """A coarse tensor of `frames` × (size / factor)² values, upsampled to the batch and the image.

    With `frames` < batch the coarse values are interpolated across the batch too, so neighbouring
    images share them (Lucid's `lowres_tensor`); on its own it is a low-resolution image.
    """

    images_first = False

    def __init__(self, batch: int, size: int, factor: int = 4, frames: int | None = None, sd: float = 0.01,
                 decorrelate: bool = True, channels: int = 3) -> None:
        super().__init__(decorrelate)
        frames = frames or batch
        side = max(1, size // factor)
        self.coarse = nn.Parameter(torch.randn(1, channels, frames, side, side) * sd)
        self.shape = (batch, size, size)

    def raw(self) -> Tensor:
        volume = F.interpolate(self.coarse, size=self.shape, mode="trilinear", align_corners=True)
        return volume[0].transpose(0, 1)  # (channels, batch, h, w) -> (batch, channels, h, w)


@ranges(levels=at_least(1, "at least 1 level (1: the full-resolution image alone)"))
class LaplacianPyramid(Param):
    """A sum of `levels` images at resolutions size, size/2, size/4, ... (Lucid's `laplacian_pyramid`)."""

    images_first = False

    def __init__(self, batch: int, size: int, levels: int = 4, sd: float = 0.01, decorrelate: bool = True,
                 channels: int = 3) -> None:
        super().__init__(decorrelate)
        self.levels = nn.ModuleList(LowRes(batch, size, 2**k, sd=sd, channels=channels) for k in range(levels))

    def raw(self) -> Tensor:
        return sum(level.raw() for level in self.levels)


SHARED = Range(lambda parts: all(len(part) == 2 and min(part) >= 1 for part in parts),
               "a list of [frames, factor] pairs, each at least 1, e.g. [[1,4],[2,8]]")


@ranges(shared=SHARED)
class Shared(Param):
    """A per-image `base` plus low-resolution parts shared across the batch (Lucid's interpolation param).

    `shared` lists (frames, factor) pairs: a coarse tensor of `frames` images at size/factor, spread
    over the batch. Shared parts make the images of an interpolation change smoothly from one to the next.
    """

    images_first = False

    def __init__(self, batch: int, size: int, base: Callable[..., Param],
                 shared: Sequence[Sequence[int]] = ((1, 2), (1, 4), (1, 8), (2, 8), (1, 16), (2, 16)),
                 channels: int = 3) -> None:
        base_param = base(batch=batch, size=size, channels=channels)
        super().__init__(base_param.decorrelate)
        self.base = base_param
        self.shared = nn.ModuleList(LowRes(batch, size, factor, min(frames, batch), channels=channels)
                                    for frames, factor in shared)

    def raw(self) -> Tensor:
        return self.base.raw() + sum(part.raw() for part in self.shared)


@ranges(hidden=at_least(1, "at least 1 channel per hidden layer"), layers=at_least(0, "0 or more hidden layers"))
class CPPN(Param):
    """A small network from pixel coordinates to colour (Lucid's `cppn`): smooth, resolution-free images.

    Eight 1×1 convolutions of 24 channels with Lucid's composite activation (atan, and its square).
    Needs a smaller learning rate than the image bases (Lucid uses Adam at 0.005).
    """

    images_first = False

    def __init__(self, batch: int, size: int, hidden: int = 24, layers: int = 8, decorrelate: bool = False,
                 channels: int = 3) -> None:
        super().__init__(decorrelate)
        r = 3**0.5
        ys, xs = torch.meshgrid(torch.linspace(-r, r, size), torch.linspace(-r, r, size), indexing="ij")
        self.register_buffer("coordinates", torch.stack([xs, ys])[None].expand(batch, 2, size, size))
        convs, width = [], 2
        for _ in range(layers):
            conv = nn.Conv2d(width * batch, hidden * batch, 1, groups=batch)  # one independent net per image
            nn.init.normal_(conv.weight, std=(1 / width) ** 0.5)
            nn.init.zeros_(conv.bias)
            convs.append(conv)
            width = 2 * hidden
        self.hidden = nn.ModuleList(convs)
        self.out = nn.Conv2d(width * batch, channels * batch, 1, groups=batch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.batch, self.channels = batch, channels

    def raw(self) -> Tensor:
        x = self.coordinates.reshape(1, -1, *self.coordinates.shape[-2:])
        for conv in self.hidden:
            x = torch.atan(conv(x)).unflatten(1, (self.batch, -1))
            x = torch.cat([x / 0.67, x * x / 0.6], 2).flatten(1, 2)  # Lucid's composite activation
        return self.out(x).reshape(self.batch, self.channels, *x.shape[-2:])


class Maco(Param):
    """Phase-only Fourier optimization with a fixed magnitude spectrum (MACO, Fel et al. 2023).

    Only the phase is optimized; the magnitude is the average spectrum of `spectrum_from` images
    (a folder or a list of files, no downloads) or, by default, a 1/f^decay_power model. Fixing the
    magnitude keeps the image's power spectrum natural, a mild learned prior.
    """

    def __init__(self, batch: int, size: int, spectrum_from: str | list[str] | None = None,
                 decay_power: float = 1.0, decorrelate: bool = True, channels: int = 3) -> None:
        super().__init__(decorrelate)
        if spectrum_from is not None and channels != 3:
            raise ArgumentError(f"{{spectrum}} takes the spectrum of RGB photos, but the model takes {channels} "
                                "channels; leave {none} for the 1/f model", kind="channels", value=channels,
                                allowed="3 (RGB)", spectrum=Arg(Maco, "spectrum_from"),
                                none=Arg(Maco, "spectrum_from", None))
        magnitude = (spectrum_scale(size, decay_power).expand(channels, -1, -1) if spectrum_from is None
                     else average_magnitude(spectrum_from, size))
        self.register_buffer("magnitude", magnitude / magnitude.mean())
        self.phase = nn.Parameter((torch.rand(batch, *magnitude.shape) * 2 - 1) * math.pi)
        self.size = size

    def raw(self) -> Tensor:
        spectrum = self.magnitude * torch.polar(torch.ones_like(self.phase), self.phase)
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size))
        image = image - image.mean((2, 3), keepdim=True)
        return image / (image.std((2, 3), keepdim=True) + 1e-6)


class PriorLatent(Param):
    """The latent code of a learned prior's decoder (Nguyen et al. 2016's generator prior).

    `path` is a prior file from `fvexp task=train_prior` (`fvexp.optvis.priors`). Only images the
    decoder can draw are reachable, so the result keeps the statistics of the images it was trained
    on; the code passes through tanh, bounded as the encoder's was in training.
    """

    def __init__(self, batch: int, size: int, path: str | None = None, sd: float = 0.01, channels: int = 3) -> None:
        if path is None:
            raise ArgumentError("{piece} needs {path}=PRIOR_FILE; {hint}", kind="file", value=None,
                                piece=Arg(PriorLatent), path=Arg(PriorLatent, "path"), hint=Setting.TRAIN_PRIOR)
        super().__init__(decorrelate=False)
        self.prior = load_prior(path, Arg(PriorLatent, "path"), channels, size)
        side = size // self.prior.stride
        self.code = nn.Parameter(torch.randn(batch, self.prior.settings["latent"], side, side) * sd)

    def raw(self) -> Tensor:
        return self.prior.decode_raw(torch.tanh(self.code))


def average_magnitude(source: str | Sequence[str], size: int) -> Tensor:
    """Mean FFT magnitude (3, size, size//2+1) of the images in a folder or a list of files."""
    from fvexp.optvis.data import scan
    from fvexp.optvis.images import load

    files: list[Path] = []
    for path in map(Path, [source] if isinstance(source, str) else source):
        files += scan(path, key=Arg(Maco, "spectrum_from")) if path.is_dir() else [path]
    if not files:
        raise ArgumentError("{spectrum} is an empty list; give an image folder or a list of image files",
                            kind="images", value=source, spectrum=Arg(Maco, "spectrum_from"))
    images = torch.cat([load(f, size, key=Arg(Maco, "spectrum_from")) for f in files])
    return torch.fft.rfft2(images - images.mean((2, 3), keepdim=True)).abs().mean(0)


def gaussian_blur(t: Tensor, sigma: float) -> Tensor:
    """Blur each channel of a (B, C, H, W) tensor with a separable Gaussian of `sigma` pixels."""
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = t.shape[1]
    row = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    t = F.conv2d(F.pad(t, [radius, radius, 0, 0], mode="reflect"), row, groups=channels)
    return F.conv2d(F.pad(t, [0, 0, radius, radius], mode="reflect"), row.transpose(2, 3), groups=channels)


def fit(param: Param, images: Tensor, steps: int = 300, lr: float = 0.05) -> float:
    """Move `param` until it renders `images` (B, 3, H, W); return the PSNR of the fit in dB.

    One fitting loop inverts every parameterization, Fourier, pixel or CPPN alike, so a batch can
    start from natural images instead of noise. Targets are kept off 0 and 1, which the sigmoid
    reaches only at infinity.
    """
    target = images.clamp(0.02, 0.98)
    optimizer = torch.optim.Adam(param.parameters(), lr=lr)
    for _ in range(steps):
        loss = (param() - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = (param() - images).pow(2).mean().item()
    return 10 * math.log10(1 / max(error, 1e-12))
