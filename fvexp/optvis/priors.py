"""Learned image priors: a small denoising autoencoder trained on crops of your own images.

The article's spectrum of regularization ends with priors learned from data. A denoising
autoencoder serves both uses it describes with one small file: the whole network is a denoiser
D, so `‖x − D(x)‖²` is the "regularization by denoising" penalty (Romano et al. 2017), which pulls
an image towards what the denoiser thinks is natural; its decoder alone is a generator, so an
image can be optimized in its latent space (Nguyen et al. 2016's generator prior). It is trained
in minutes on two CPU cores, on random crops of one image folder, and learns the statistics of
images at the size they were resized to (`size`): a prior is used at that render size only.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvexp.errors import Arg, ArgumentError, Setting, not_a_file

FORMAT = "fvexp-prior"
VERSION = 2  # the format this fvexp writes
READABLE = (1, 2)  # the formats it reads: version 1 drew with nearest-neighbour upsampling
ZIP = b"PK\x03\x04"  # how a file torch.save writes begins


class Autoencoder(nn.Module):
    """Encoder of `depth` stride-2 convolutions to `latent` channels in [−1, 1], and its mirror decoder.

    The decoder upsamples bilinearly before each convolution: transposed convolutions print a
    checkerboard on every generated image, and nearest-neighbour upsampling prints the latent grid
    (blocks of `stride` pixels) on images optimized in the latent space, whose codes leave the
    range the decoder was trained on. Files of version 1 were drawn with "nearest" and load so.
    """

    def __init__(self, channels: int = 3, width: int = 32, latent: int = 8, depth: int = 2,
                 upsample: str = "bilinear") -> None:
        super().__init__()
        self.settings = {"channels": channels, "width": width, "latent": latent, "depth": depth, "upsample": upsample}
        self.size: int | None = None  # the image side it was trained for, once saved or loaded
        self.steps_done = 0  # training steps finished: fewer than asked when the training was interrupted

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride, 1)

        widths = [max(8, width // 2 ** (depth - i)) for i in range(depth + 1)]  # narrow at full resolution
        down: list[nn.Module] = []
        for i in range(depth):
            down += [conv(channels if i == 0 else widths[i], widths[i + 1], 2), nn.ReLU()]
        self.encoder = nn.Sequential(*down, conv(widths[-1], widths[-1]), nn.ReLU(), conv(widths[-1], latent),
                                     nn.Tanh())
        up: list[nn.Module] = [conv(latent, widths[-1]), nn.ReLU(), conv(widths[-1], widths[-1]), nn.ReLU()]
        for i in reversed(range(depth)):
            up += [nn.Upsample(scale_factor=2.0, mode=upsample), conv(widths[i + 1], widths[i]), nn.ReLU()]
        self.decoder = nn.Sequential(*up, conv(widths[0], channels))

    @property
    def stride(self) -> int:
        """Pixels per latent position: image sides must be multiples of it."""
        return 2 ** self.settings["depth"]

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images * 2 - 1)

    def decode_raw(self, latent: Tensor) -> Tensor:
        """The decoder's output before the sigmoid: what a parameterization's `raw()` gives."""
        return self.decoder(latent)

    def forward(self, images: Tensor) -> Tensor:
        """The denoised images, in [0, 1]."""
        return torch.sigmoid(self.decode_raw(self.encode(images)))


def train(images: Tensor, crop: int = 48, steps: int = 800, batch: int = 16, noise: float = 0.1, lr: float = 0.002,
          width: int = 32, latent: int = 8, depth: int = 2, seed: int = 0,
          on_step: Callable[[int, float], None] | None = None) -> Autoencoder:
    """Train a denoising autoencoder on random `crop`² crops of `images` (N, C, H, W) in [0, 1].

    Each crop is flipped at random and gets Gaussian noise of a standard deviation drawn in
    [0, `noise`]; the loss is the mean squared error to the clean crop. `on_step(step, loss)`
    sees every step. Ctrl-C (KeyboardInterrupt) ends the training early, as it ends a render: the
    network comes back as it was after its last whole step, with `steps_done` saying which (an
    interrupt inside an optimizer step would leave some weights updated and others not).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Autoencoder(images.shape[1], width, latent, depth)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    warm_up = min(0.5, max(0.1, 2.5 / steps))  # at least two steps of warm-up, or OneCycleLR divides by zero
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=warm_up)
    whole = (snapshot(net), 0)  # the weights after the last whole step, and its number: set at once
    try:
        for step in range(1, steps + 1):
            clean = random_crops(images, crop, batch, generator)
            sigma = torch.rand(batch, 1, 1, 1, generator=generator) * noise
            noisy = (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
            loss = F.mse_loss(net(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            whole = (snapshot(net), step)
            if on_step:
                on_step(step, loss.item())
    except KeyboardInterrupt:
        net.load_state_dict(whole[0])
    net.steps_done = whole[1]
    return net.eval().requires_grad_(False)


def snapshot(net: nn.Module) -> dict[str, Tensor]:
    """A copy of the weights (0.14 ms for the default network's 34k: a tenth of a percent of a step)."""
    return {name: value.clone() for name, value in net.state_dict().items()}


def random_crops(images: Tensor, crop: int, batch: int, generator: torch.Generator) -> Tensor:
    """`batch` random `crop`² crops of random images, each flipped left-right half of the time."""
    n, _, h, w = images.shape
    picks = torch.randint(n, (batch,), generator=generator).tolist()
    ys = torch.randint(h - crop + 1, (batch,), generator=generator).tolist()
    xs = torch.randint(w - crop + 1, (batch,), generator=generator).tolist()
    flips = (torch.rand(batch, generator=generator) < 0.5).tolist()
    crops = [images[i, :, y : y + crop, x : x + crop] for i, y, x in zip(picks, ys, xs, strict=True)]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flips, strict=True)]).float()


def save(net: Autoencoder, path: Path, size: int, meta: dict[str, Any]) -> Path:
    """Write the prior: its weights, its settings, the image size it learned, and `meta` (where it came from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "settings": net.settings, "size": size, "meta": meta,
                "state": net.state_dict()}, path)
    return path


def load(path: str | Path, key: str | Arg, channels: int | None = None, size: int | None = None) -> Autoencoder:
    """The prior in `path`, checked against the run's image `channels` and `size` when given.

    `key` names where the path came from, for the error message: the piece's argument, or a config key.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _refused(key, path, "the prior file {path!r} {why}; {hint}", why=not_a_file(path))
    stored = read(path, key)
    try:
        net = Autoencoder(**{"upsample": "nearest", **stored["settings"]})  # version 1 had no choice
        net.load_state_dict(stored["state"])
        trained_size = int(stored["size"])
    except Exception as error:  # a key or shape error: the file says it is a prior, and its contents disagree
        raise _refused(key, path, "{path!r} is an fvexp prior file whose contents are damaged ({why}); {hint}",
                       why=f"{type(error).__name__}: {' '.join(str(error).split())[:80]}") from None
    net.size = trained_size
    check(net, path, key, channels, size)
    return net.eval().requires_grad_(False)


def read(path: Path, key: str | Arg) -> dict[str, Any]:
    """What the prior file holds, or one line saying what the file is instead.

    `weights_only` loading never runs code from the file: a pickle that names a function to call
    (os.system, say) is refused, and said so in words rather than in torch's advice to load it
    unsafely. Torch's own messages for a cut file are internal ("[Errno 22]", a zip reader's) and
    are replaced by what they mean.
    """
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        code = re.search(r"GLOBAL (\S+)", str(error)) if isinstance(error, pickle.UnpicklingError) else None
        if code:
            what = (f"it is a pickle that would run Python code ({code.group(1)}) when loaded, and fvexp loads only "
                    "tensors and numbers from a prior, never code")
        elif path.read_bytes()[:4] == ZIP and not zipfile.is_zipfile(path):
            what = (f"it is cut short ({path.stat().st_size} bytes: it begins as a torch file and its end is missing, "
                    "an interrupted copy or download?)")
        else:
            what = "it is not a file torch.save wrote"
        raise _refused(key, path, "{path!r} is not a readable fvexp prior file: {why}; {hint}", why=what) from None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT:
        raise _refused(key, path, "{path!r} is not a readable fvexp prior file: it is a torch file without format "
                       "{why!r}; {hint}", why=FORMAT)
    if stored.get("version") not in READABLE:
        raise _refused(key, path, "{path!r} is an fvexp prior of format version {why!r}, and this fvexp reads "
                       "versions {readable}; use the fvexp that wrote it, or {hint}", why=stored.get("version"),
                       readable=" and ".join(map(str, READABLE)))
    return stored


def check(net: Autoencoder, path: str | Path, key: str | Arg, channels: int | None = None,
          size: int | None = None) -> None:
    """Reject a prior made for another channel count or image size than the run's, saying what to do."""
    have = net.settings["channels"]
    if channels is not None and channels != have:
        raise _refused(key, path, "the prior {path!r} was trained on {have}-channel images and the model takes "
                       "{channels}-channel images; train a prior on images with {channels} channels", have=have,
                       channels=channels)
    if size is not None and size != net.size:
        raise _refused(key, path, "the prior {path!r} was trained on images of {trained} px and the run's images are "
                       "{size} px; use {render}={trained}, or train a prior with {data}={size}", trained=net.size,
                       size=size, render=Setting.IMAGE_SIZE, data=Setting.TRAINING_SIZE)


def _refused(key: str | Arg, path: str | Path, template: str, **parts: Any) -> ArgumentError:
    """A prior file refused, after `key`, the argument or config key that named it."""
    return ArgumentError("{key}: " + template, kind="prior file", value=str(path), key=key, path=str(path),
                         hint=Setting.TRAIN_PRIOR, **parts)


def denoising_psnr(net: nn.Module, images: Tensor, noise: float, seed: int = 0) -> float:
    """PSNR in dB of the denoised `images` (with Gaussian noise of sd `noise`) against the clean ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        noisy = (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        error = (net(noisy) - images).pow(2).mean().item()
    return 10 * math.log10(1 / max(error, 1e-12))
