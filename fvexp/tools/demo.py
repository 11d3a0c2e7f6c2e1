"""Build a small image folder for trying dataset examples offline, from scikit-image's sample photos.

    python -m fvexp.tools.demo outputs/demo_photos

Each photo is written whole and as crops (four halves' corners and a 3×3 grid of thirds), in one
sub-folder per photo: about 270 images of cats, coffee, rockets, bricks, gravel, coins, text and
more, enough for a unit's top and bottom examples to differ visibly. For real work point
`data.dir` at your own images or ImageNet's validation set instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "logo", "brick", "camera", "clock", "coins", "grass", "gravel", "moon", "page", "text",
          "cell"]


def crops(image: Image.Image) -> dict[str, Image.Image]:
    """The whole photo, its four half-size corners and a 3×3 grid of third-size tiles."""
    w, h = image.size
    pieces = {"full": image}
    for parts in (2, 3):
        for row in range(parts):
            for col in range(parts):
                box = (col * w // parts, row * h // parts, (col + 1) * w // parts, (row + 1) * h // parts)
                pieces[f"{parts}x{parts}_{row}{col}"] = image.crop(box)
    return pieces


def build(folder: Path, photos: list[str] = PHOTOS) -> list[Path]:
    """Write the demo folder (JPEG and PNG mixed, as real folders are) and return its files."""
    import skimage.data

    written = []
    for name in photos:
        array = getattr(skimage.data, name)()
        image = Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, (piece, crop) in enumerate(crops(image).items()):
            path = folder / name / f"{name}_{piece}.{'png' if i % 4 == 0 else 'jpg'}"
            crop.save(path, quality=92) if path.suffix == ".jpg" else crop.save(path)
            written.append(path)
    return written


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo_photos")
    files = build(folder)
    print(f"{len(files)} images in {folder}/ — try: fvexp task=dataset_examples data.dir={folder}")


if __name__ == "__main__":
    main()
