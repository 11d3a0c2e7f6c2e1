"""Turning image batches into PNG files: one per image, and a grid for a whole batch."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from fvexp.errors import FvexpError, not_a_file

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def to_pil(image: Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB image.

    Images of a network with other than 3 input channels show each channel as a grey tile, side by side.
    """
    if image.shape[0] != 3:
        image = image.transpose(0, 1).flatten(1)[None].expand(3, -1, -1)  # (C, H, W) -> grey (H, C·W)
    array = image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def grid(images: Tensor, gap: int = 4) -> Image.Image:
    """A batch (B, C, H, W) as one near-square grid of images on white, `gap` pixels apart."""
    count = len(images)
    w, h = to_pil(images[0]).size
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), "white")
    for i, image in enumerate(images):
        sheet.paste(to_pil(image), ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    return sheet


def picture(images: Tensor) -> Image.Image:
    """What a batch looks like as one picture: the image itself for batch 1, else the grid."""
    return to_pil(images[0]) if len(images) == 1 else grid(images)


def save(images: Tensor, path: Path) -> Path:
    """Write `path` (the picture of the batch) and, for a batch, `<stem>_<i>.png` per image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(images).save(path)
    if len(images) > 1:
        for i, image in enumerate(images):
            to_pil(image).save(path.with_name(f"{path.stem}_{i}{path.suffix}"))
    return path


def load(path: str | Path, size: int, key: str) -> Tensor:
    """An image file as a (1, 3, size, size) tensor in [0, 1]: centre-cropped to a square, resized.

    `key` names the config entry the path came from, for the error message.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FvexpError(f"{key}: the image {str(path)!r} {not_a_file(path)} (give a path to a {'/'.join(SUFFIXES)} "
                         "file)")
    try:
        with warnings.catch_warnings():  # PIL warns below its limit and refuses above twice the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                image = opened.convert("RGB")
    except Image.DecompressionBombError as error:
        raise FvexpError(too_large(path, error, key)) from None
    except OSError as error:
        raise FvexpError(f"{key}: cannot read {str(path)!r} as an image ({error})") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def too_large(path: Path, error: Exception, key: str) -> str:
    """The message for an image beyond PIL's decompression-bomb limit, with its size and the limit."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (f"{key}: the image {str(path)!r} has {size}, beyond the {limit:,} pixels PIL decodes (its guard against "
            "decompression bombs); use a smaller copy of it, e.g. resized to 4096 px on its longer side")


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


def histogram(values: np.ndarray, marks: dict[str, float], title: str, bins: int = 40) -> Image.Image:
    """A histogram of `values` with labelled vertical lines at `marks` (e.g. the top-k threshold)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    width, height, left, bottom = 640, 320, 50, 40
    low = min(float(values.min()), *marks.values())
    high = max(float(values.max()), *marks.values())
    high = high if high > low else low + 1
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    plot_w, plot_h = width - left - 20, height - bottom - 40
    x_of = lambda v: left + (v - low) / (high - low) * plot_w  # noqa: E731
    for count, start, end in zip(counts, edges[:-1], edges[1:], strict=True):
        bar = count / max(1, counts.max()) * plot_h
        draw.rectangle((x_of(start), height - bottom - bar, max(x_of(start), x_of(end) - 1), height - bottom),
                       fill="steelblue")
    draw.line((left, height - bottom, width - 20, height - bottom), fill="black")
    draw.text((8, 8), title, fill="black", font=font)
    draw.text((left, height - bottom + 6), f"{low:.3g}", fill="black", font=font)
    draw.text((width - 80, height - bottom + 6), f"{high:.3g}", fill="black", font=font)
    draw.text((8, 40), f"{counts.max()}", fill="black", font=font)
    for i, (name, value) in enumerate(marks.items()):
        colour = ("crimson", "darkorange", "seagreen")[i % 3]
        draw.line((x_of(value), 30, x_of(value), height - bottom), fill=colour, width=2)
        draw.text((min(x_of(value) + 4, width - 120), 30 + 14 * i), f"{name} {value:.3g}", fill=colour, font=font)
    draw.text((width // 2 - 40, height - 18), "activation", fill="black", font=font)
    return sheet
