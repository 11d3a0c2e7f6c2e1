"""Dataset examples: the natural images that excite a unit most and least, beside the optimized ones.

Optimization separates cause from correlation; dataset examples show the range of what a unit
responds to in real images. Together they test a hypothesis ("the fur texture, not the dog's
head"). For a unit (`objectives.Unit`) this ranks every image of a folder, keeps the top-k and
bottom-k with crops at the strongest response (sized by the layer's effective receptive field),
a spectrum of examples at evenly spaced quantiles, the histogram and a CSV of every image.

A layer's activations over a folder are computed once, reduced per image and channel to the
value that ranks it and its position, and cached on disk by model, layer, reduction, folder
fingerprint and preprocessing: the next query on the same layer (any channel) reads the cache.
The reduced values live in memory-mapped files, so a 100k-image folder costs the memory of one
batch of images plus a column of numbers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from fvexp.errors import ArgumentError, FvexpError, FvexpWarning, Setting
from fvexp.optvis.data import PREPROCESSING, batches, fingerprint, open_image, scan
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import contact_sheet, stack, to_pil
from fvexp.optvis.objectives import Objective, Unit
from fvexp.optvis.plots import histogram

CELL = 128  # pixels of one example in the strips


@dataclass
class Activations:
    """One layer's response to every image of a folder, reduced per image and channel."""

    root: Path
    files: list[Path]
    values: np.ndarray  # (N, C) float32: the value that ranks image n for channel c; NaN if unreadable
    where: np.ndarray  # (N, C) int32: the flat map position the value comes from; -1 for vector layers
    map_size: tuple[int, int]  # (h, w) of the layer's map at the data size; (1, 1) for vectors
    cached: bool

    @property
    def unreadable(self) -> list[Path]:
        return [self.files[i] for i in np.flatnonzero(np.isnan(self.values[:, 0]))]


@dataclass
class Example:
    """One ranked image: its file, the unit's value, and where on the layer's map it fires (y, x)."""

    file: Path
    value: float
    position: tuple[int, int] | None
    label: str


def unit_of(objective: Objective, task: str) -> Unit:
    if objective.unit is None:
        raise ArgumentError("{task} needs an objective about one unit, and {name!r} is not; use {units}",
                            kind="objective", value=objective.name, task=task, name=objective.name,
                            units=Setting.UNIT_OBJECTIVES)
    return objective.unit


def reduce(act: Tensor, unit: Unit) -> tuple[Tensor, Tensor]:
    """Per image and channel: the ranking value (strongest position, or the unit's own) and its position."""
    if act.dim() == 2:
        return act, torch.full(act.shape, -1)
    h, w = act.shape[-2:]
    flat = act.flatten(2)
    if unit.position is None:
        return flat.max(2)
    y, x = unit.position
    where = (h // 2 if y is None else y) * w + (w // 2 if x is None else x)
    return flat[:, :, where], torch.full(flat.shape[:2], where)


def activations(model: FeatureModel, unit: Unit, folder: str | Path, *, size: int, batch_size: int, workers: int,
                model_key: str, cache_dir: Path, progress: bool = True) -> Activations:
    """The layer's reduced activations over the images under `folder`, from the cache or computed (and cached).

    Images are resized and centre-cropped to `size` (`data.open_image`) and decoded `batch_size` at a
    time by `workers` processes (0: in this one); `model_key` names the network in the cache key, which
    also holds the layer, the reduction, the folder's fingerprint and `size`.
    """
    if model.image_channels != 3:
        raise ArgumentError(f"dataset examples are photos, and this model takes {model.image_channels}-channel "
                            "images; {leave} for it", kind="channels", value=model.image_channels, allowed="3",
                            leave=Setting.NO_EXAMPLES)
    files = [file.absolute() for file in scan(folder)]
    root = Path(folder).expanduser().absolute()
    reduction = "max" if unit.position is None else f"at {unit.position}"
    key = hashlib.sha256(json.dumps([model_key, unit.layer, reduction, fingerprint(root, files), PREPROCESSING,
                                     size]).encode()).hexdigest()[:20]
    kept = cache_dir / f"{unit.layer}-{key}"
    decoding = (size, batch_size, workers)
    if (kept / "meta.json").exists():
        try:
            return _read(kept, root, files, folder, cached=True)
        except (OSError, ValueError, KeyError) as error:  # truncated by a full disk, or edited by hand
            warnings.warn(f"the cached activations {kept} are damaged ({error}); they are discarded and computed "
                          "again", FvexpWarning, stacklevel=2)
            shutil.rmtree(kept, ignore_errors=True)
    try:
        _compute(model, unit, files, decoding, kept, progress)
    except OSError as error:  # a cache folder that cannot be written costs the cache, not the run
        warnings.warn(f"cannot write the activation cache in {cache_dir} ({error.strerror or error}); the activations "
                      "are computed without caching", FvexpWarning, stacklevel=2)
        with tempfile.TemporaryDirectory(prefix="fvexp-activations-") as temporary:
            _compute(model, unit, files, decoding, Path(temporary) / kept.name, progress)
            return _read(Path(temporary) / kept.name, root, files, folder, cached=False, in_memory=True)
    return _read(kept, root, files, folder, cached=False)


def _read(folder: Path, root: Path, files: list[Path], where: str | Path, cached: bool,
          in_memory: bool = False) -> Activations:
    """The activations kept in `folder`, memory-mapped (or read whole, for a folder about to be removed)."""
    meta = json.loads((folder / "meta.json").read_text())
    mode = None if in_memory else "r"
    values, positions = np.load(folder / "values.npy", mmap_mode=mode), np.load(folder / "where.npy", mmap_mode=mode)
    if len(values) != len(files) or len(positions) != len(files) or meta["files"] != len(files):
        raise ValueError(f"{len(values)} rows for {len(files)} files")
    if np.isnan(values[:, 0]).all():
        raise FvexpError(f"none of the {len(files)} image files under {where!r} could be read as an "
                         "image; check that they are .jpg, .png or .webp images")
    return Activations(root, files, values, positions, tuple(meta["map_size"]), cached)


@torch.no_grad()
def _compute(model: FeatureModel, unit: Unit, files: list[Path], decoding: tuple[int, int, int], folder: Path,
             progress: bool) -> None:
    """Stream the files through the model in batches into memory-mapped files, then publish them at once.

    `decoding` is (size, batch_size, workers), as `data.batches` takes them.
    """
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    values = where = None
    map_size = (1, 1)
    start = 0
    bar = tqdm(total=len(files), desc=f"activations {unit.layer}", unit="img", disable=not progress)
    with model.reading([unit.layer]) as read:
        for images, readable in batches(files, *decoding):
            act = read(images.to(model.device, non_blocking=True))[unit.layer]
            value, position = reduce(act, unit)
            if values is None:
                map_size = tuple(act.shape[-2:]) if act.dim() == 4 else (1, 1)
                values = open_memmap(partial / "values.npy", "w+", np.float32, (len(files), act.shape[1]))
                where = open_memmap(partial / "where.npy", "w+", np.int32, (len(files), act.shape[1]))
            value[~readable] = float("nan")
            values[start : start + len(images)] = value.float().cpu().numpy()
            where[start : start + len(images)] = position.cpu().numpy()
            start += len(images)
            bar.update(len(images))
    bar.close()
    values.flush()
    where.flush()
    (partial / "meta.json").write_text(json.dumps({"layer": unit.layer, "files": len(files), "map_size": map_size}))
    try:
        partial.rename(folder)
    except OSError:  # a parallel job published the same activations first
        shutil.rmtree(partial, ignore_errors=True)


def scores(acts: Activations, unit: Unit) -> np.ndarray:
    """The unit's value for every image (NaN where unreadable), read column by column from the cache."""
    if not unit.softmax:
        return np.asarray(acts.values[:, unit.channel], dtype=np.float64)
    out = np.empty(len(acts.files))
    for start in range(0, len(out), 4096):  # the softmax needs whole rows: a bounded chunk at a time
        rows = torch.from_numpy(np.array(acts.values[start : start + 4096], dtype=np.float64))
        out[start : start + len(rows)] = rows.softmax(1)[:, unit.channel].numpy()
    return out


def ranking(values: np.ndarray) -> np.ndarray:
    """Indices of the readable images, highest value first (ties in file order)."""
    return np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[: int(np.isfinite(values).sum())]


def select(acts: Activations, unit: Unit, k: int, spectrum: int) -> dict[str, list[Example]]:
    """The top-k, bottom-k and `spectrum` examples at evenly spaced quantiles, highest first."""
    values = scores(acts, unit)
    order = ranking(values)
    w = acts.map_size[1]

    def example(n: int, label: str) -> Example:
        flat = int(acts.where[n, unit.channel])
        return Example(acts.files[n], float(values[n]), None if flat < 0 else divmod(flat, w), label)

    quantiles = np.linspace(1, 0, spectrum) if spectrum > 1 else np.array([1.0])
    picks = [order[round((1 - q) * (len(order) - 1))] for q in quantiles]
    return {"top": [example(n, f"top {i + 1}") for i, n in enumerate(order[:k])],
            "bottom": [example(n, f"bottom {i + 1}") for i, n in enumerate(order[::-1][:k])],
            "spectrum": [example(n, f"q {q:.0%}") for n, q in zip(picks, quantiles, strict=True)]}


def receptive_field(model: FeatureModel, layer: str, size: int, share: float = 0.9) -> int:
    """Side in pixels of the square around a unit that holds `share` of its input gradient.

    The effective receptive field (Luo et al. 2016) is much smaller than the theoretical one of a
    deep layer; crops of that side show what the unit saw, not the whole photo. Measured on random
    images, so it works for any network.
    """
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)).to(model.device)
    images.requires_grad_(True)
    with model.reading([layer]) as read:
        act = read(images)[layer]
    if act.dim() != 4:
        return size
    h, w = act.shape[-2:]
    act[:, :, h // 2, w // 2].sum().backward()
    grad = images.grad.abs().sum((0, 1))
    box = lambda side: crop_box((h // 2, w // 2), (h, w), side, size)  # noqa: E731
    total = grad.sum()
    stride = size // h
    for side in range(stride, size, 2):
        left, top, right, bottom = box(side)
        if grad[top:bottom, left:right].sum() >= share * total:
            return side
    return size


def crop_box(position: tuple[int, int], map_size: tuple[int, int], side: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a `side` square centred on a map position, kept inside the image."""
    (y, x), (h, w) = position, map_size
    cy, cx = (y + 0.5) * size / h, (x + 0.5) * size / w
    left = int(min(max(0, round(cx - side / 2)), size - side))
    top = int(min(max(0, round(cy - side / 2)), size - side))
    return left, top, left + side, top + side


def picture(example: Example, size: int, crop: int | None, map_size: tuple[int, int]) -> Image.Image:
    """The example as preprocessed for the model, cropped around its position when `crop` is set."""
    image = to_pil(open_image(example.file, size))
    if crop and example.position is not None:
        image = image.crop(crop_box(example.position, map_size, crop, size))
    return image


def write(out: Path, acts: Activations, unit: Unit, chosen: dict[str, list[Example]], size: int, crop: int,
          optimized: tuple[Tensor, float] | None = None) -> dict[str, Path]:
    """The strips, histogram and CSV in `out/examples/`, and the overview `out/examples.png`.

    `size` is the side the examples were read at (`activations`' size), `crop` the side of their crops.
    `optimized` is (image, the unit's value on it): shown first in the overview and marked on the histogram.
    """
    folder = out / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    spatial = acts.map_size != (1, 1)
    views = {"top": ("top", None), "bottom": ("bottom", None), "spectrum": ("spectrum", crop if spatial else None)}
    if spatial:
        views |= {"top_crops": ("top", crop), "bottom_crops": ("bottom", crop)}
    strips: dict[str, Image.Image] = {}
    paths: dict[str, Path] = {}
    for view, (group, side) in views.items():
        cells = [(picture(e, size, side, acts.map_size), f"{e.label}\n{e.value:.3g}\n{_short(e.file.name)}")
                 for e in chosen[group]]
        strips[view] = contact_sheet(cells, columns=len(cells), side=CELL)
        strips[view].save(paths.setdefault(view, folder / f"{view}.png"))
    values = scores(acts, unit)
    finite = values[np.isfinite(values)]
    marks = {f"top {len(chosen['top'])}": chosen["top"][-1].value}
    if optimized is not None:
        marks["optimized"] = optimized[1]
    title = f"{unit.layer}:{unit.channel} over {len(finite)} images"
    histogram(finite, marks, title).save(paths.setdefault("histogram", folder / "histogram.png"))
    paths["csv"] = _csv(folder / "activations.csv", acts, unit, values)
    rows = [("top" + (" (crops)" if spatial else ""), strips["top_crops" if spatial else "top"]),
            ("bottom" + (" (crops)" if spatial else ""), strips["bottom_crops" if spatial else "bottom"]),
            ("spectrum: evenly spaced quantiles, highest first", strips["spectrum"])]
    if optimized is not None:
        cell = contact_sheet([(to_pil(optimized[0]), f"optimized\n{optimized[1]:.3g}")], columns=1, side=CELL)
        rows.insert(0, ("optimized", cell))
    stack(rows, f"{unit.layer}:{unit.channel}: dataset examples from {acts.root.name}/").save(
        paths.setdefault("overview", out / "examples.png"))
    return paths


def _csv(path: Path, acts: Activations, unit: Unit, values: np.ndarray) -> Path:
    """Every readable image, best first: file (relative to the folder), activation, map and pixel position."""
    w = acts.map_size[1]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "file", "activation", "y", "x"])
        for rank, n in enumerate(ranking(values), 1):
            flat = int(acts.where[n, unit.channel])
            y, x = divmod(flat, w) if flat >= 0 else ("", "")
            writer.writerow([rank, acts.files[n].relative_to(acts.root), f"{values[n]:.6g}", y, x])
    return path


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
