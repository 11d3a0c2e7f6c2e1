"""Turning image batches into PNG files: one per image, and a grid for a whole batch."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fvexp.errors import Arg, ArgumentError, not_a_file

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def to_pil(image: Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB image (other channel counts: see `shown`)."""
    array = shown(image).detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def shown(image: Tensor) -> Tensor:
    """The (3, H, W') tensor an image is shown as: itself, or for a network with other than 3 input
    channels each channel as a grey tile, side by side (W' = C·W)."""
    if image.shape[0] == 3:
        return image
    return image.transpose(0, 1).flatten(1)[None].expand(3, -1, -1)


def picture(images: Tensor, gap: int = 4) -> Image.Image:
    """What a batch (B, C, H, W) looks like as one picture: the image itself for batch 1, else a
    near-square grid of its images on white, `gap` pixels apart (`make_grid`, its outer border cut off).
    """
    from torchvision.utils import make_grid

    if len(images) == 1:  # make_grid too returns a lone image as it is, unpadded
        return to_pil(images[0])
    cols = math.ceil(math.sqrt(len(images)))
    sheet = make_grid(torch.stack([shown(image) for image in images]), nrow=cols, padding=gap, pad_value=1.0)
    return to_pil(sheet[:, gap : sheet.shape[1] - gap, gap : sheet.shape[2] - gap])


def save(images: Tensor, path: Path) -> Path:
    """Write `path` (the picture of the batch) and, for a batch, `<stem>_<i>.png` per image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(images).save(path)
    if len(images) > 1:
        for i, image in enumerate(images):
            to_pil(image).save(path.with_name(f"{path.stem}_{i}{path.suffix}"))
    return path


def load(path: str | Path, size: int, key: str | Arg) -> Tensor:
    """An image file as a (1, 3, size, size) tensor in [0, 1]: centre-cropped to a square, resized.

    `key` names where the path came from, for the error message: the piece's argument, or a config key.
    """
    path = Path(path)
    if not path.is_file():
        raise ArgumentError("{key}: the image {path!r} {why} (give a path to a {suffixes} file)", kind="image",
                            value=str(path), key=key, path=str(path), why=not_a_file(path),
                            suffixes="/".join(SUFFIXES))
    try:
        with warnings.catch_warnings():  # PIL warns below its limit and refuses above twice the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                image = opened.convert("RGB")
    except Image.DecompressionBombError as error:
        raise too_large(path, error, key) from None
    except OSError as error:
        raise ArgumentError("{key}: cannot read {path!r} as an image ({error})", kind="image", value=str(path),
                            key=key, path=str(path), error=error) from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def too_large(path: Path, error: Exception, key: str | Arg) -> ArgumentError:
    """The error for an image beyond PIL's decompression-bomb limit, with its size and the limit."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return ArgumentError("{key}: the image {path!r} has {size}, beyond the {limit} pixels PIL decodes (its guard "
                         "against decompression bombs); use a smaller copy of it, e.g. resized to 4096 px on its "
                         "longer side", kind="image", value=str(path), key=key, path=str(path), size=size,
                         limit=f"{limit:,}")


def contact_sheet(cells: list[tuple[Image.Image, str]], columns: int, side: int = 192) -> Image.Image:
    """Images with a caption under each (lines split at newlines), `columns` to a row, on white."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    lines = max((label.count("\n") + 1 for _, label in cells), default=1)
    caption = 6 + 15 * lines
    rows = math.ceil(len(cells) / columns)
    sheet = Image.new("RGB", (columns * (side + 8) + 8, rows * (side + caption + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(cells):
        x, y = 8 + (i % columns) * (side + 8), 8 + (i // columns) * (side + caption + 8)
        scale = side / max(image.size)  # small images are enlarged too, so every cell reads alike
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        sheet.paste(image, (x + (side - image.width) // 2, y + (side - image.height) // 2))
        draw.multiline_text((x, y + side + 4), label, fill="black", font=font, spacing=3)
    return sheet


def stack(rows: list[tuple[str, Image.Image]], title: str = "") -> Image.Image:
    """Pictures one under the other on white, each under its own caption, with a title on top."""
    from PIL import ImageDraw, ImageFont

    font, heading = ImageFont.load_default(size=13), ImageFont.load_default(size=16)
    top = 30 if title else 8
    width = max(image.width for _, image in rows) + 16
    sheet = Image.new("RGB", (width, top + sum(image.height + 22 for _, image in rows) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), title, fill="black", font=heading)
    y = top
    for caption, image in rows:
        draw.text((8, y + 4), caption, fill="dimgray", font=font)
        sheet.paste(image, (8, y + 22))
        y += image.height + 22
    return sheet
