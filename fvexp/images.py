"""Turning image batches into PNG files: one per image, and a grid for a whole batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from fvexp.errors import FvexpError

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def to_pil(image: Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB image."""
    array = image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def grid(images: Tensor, gap: int = 4) -> Image.Image:
    """A batch (B, 3, H, W) as one near-square grid of images on white, `gap` pixels apart."""
    count, _, h, w = images.shape
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
        raise FvexpError(f"{key}: the image {str(path)!r} does not exist (give a path to a {'/'.join(SUFFIXES)} file)")
    try:
        image = Image.open(path).convert("RGB")
    except OSError as error:
        raise FvexpError(f"{key}: cannot read {str(path)!r} as an image ({error})") from None
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]


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
