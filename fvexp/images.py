"""Turning image batches into PNG files: one per image, and a grid for a whole batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


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
