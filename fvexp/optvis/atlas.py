"""Activation atlases (Carter et al., 2019): what a layer sees across a whole dataset, on one map.

Single units show one facet each; an atlas shows the space of activation *vectors* the layer
actually visits on natural images. Lucid's recipe, in plain arrays and tensors: take the layer's
activation vector at a few random positions of every image (`sample`), lay the vectors out in
two dimensions so that similar ones land close together (`layout`), cut the layout into a grid
and average the vectors that fall into each cell (`cells`); each cell's mean is then rendered as a
direction objective (`objectives.direction`) by the same `render` loop as every run, after
whitening (`whitening`, Lucid's `direction_neuron_cossim_S`). `head_logits` says which class the
rest of the network attributes to a direction.

The layout is scikit-learn's t-SNE: it keeps local neighbourhoods, which is what a grid cell
averages over; it is deterministic with a seed; and scikit-learn comes with MLflow anyway, where
UMAP would add numba and its long first compilation for the few thousand vectors an atlas of a
folder samples.

Memory is the sample's (`samples` vectors of the layer's width), not the folder's: images beyond
the sample are never decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from fvexp.errors import Arg, ArgumentError, Setting
from fvexp.optvis.data import batches
from fvexp.optvis.features import LOGITS, FeatureModel
from fvexp.optvis.objectives import at_position


@dataclass
class Sample:
    """Activation vectors at sampled positions of sampled images, and each image's predicted class."""

    files: np.ndarray  # (N,) str: the sampled images, in folder order
    predicted: np.ndarray  # (N,) int64: each image's top class (-1: unreadable)
    vectors: np.ndarray  # (M, C) float32: the layer's activation vector at one position
    image: np.ndarray  # (M,) int64: index into `files`
    position: np.ndarray  # (M, 2) int64: (y, x) on the layer's map
    map_size: np.ndarray  # (2,) int64: the map's (h, w) at the data size; (1, 1) for vector layers

    def keep(self, rows: np.ndarray) -> Sample:
        """Only the vectors `rows` (e.g. those of one predicted class), with all the images."""
        return Sample(self.files, self.predicted, self.vectors[rows], self.image[rows], self.position[rows],
                      self.map_size)

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Sample:
        with np.load(path) as saved:
            return cls(**{f.name: saved[f.name] for f in fields(cls)})


def choose(count: int, per_image: int, total: int, seed: int = 0) -> np.ndarray:
    """Indices of the images to read, in folder order: all of them, or a seeded draw of total/per_image."""
    wanted = math.ceil(total / per_image)
    if wanted >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, wanted, replace=False))


@torch.no_grad()
def sample(model: FeatureModel, layer: str, files: list[Path], size: int = 224, per_image: int = 8,
           total: int = 4000, batch_size: int = 32, workers: int = 2, seed: int = 0,
           progress: bool = True) -> Sample:
    """`per_image` activation vectors at random positions of each of about total/per_image images.

    The positions of image n are drawn from (seed, n), so a sample does not depend on the batch
    size. One forward pass per batch reads both the layer and the logits (the image's class).
    """
    chosen = [files[i] for i in choose(len(files), per_image, total, seed)]
    vectors, image, position, predicted = [], [], [], []
    map_size = (1, 1)
    bar = tqdm(total=len(chosen), desc=f"atlas: sampling {layer}", unit="img", disable=not progress)
    with model.reading([layer, LOGITS]) as read:
        for images, readable in batches(chosen, size, batch_size, workers):
            acts = read(images.to(model.device))
            act = acts[layer] if acts[layer].dim() == 4 else acts[layer][:, :, None, None]
            map_size = tuple(act.shape[-2:])
            places = act.shape[-2] * act.shape[-1]
            for i, ok in enumerate(readable.tolist()):
                n = len(predicted)
                predicted.append(int(acts[LOGITS][i].argmax()) if ok else -1)
                if not ok:
                    continue
                flat = np.random.default_rng([seed, n]).choice(places, min(per_image, places), replace=False)
                vectors.append(act[i].flatten(1)[:, torch.from_numpy(flat)].T.float().cpu().numpy())
                image.append(np.full(len(flat), n))
                position.append(np.stack(np.divmod(flat, map_size[1]), 1))
            bar.update(len(images))
    bar.close()
    if not vectors:
        raise ArgumentError(f"none of the {len(chosen)} sampled image files could be read as an image; check that "
                            "{folder} holds .jpg, .png or .webp images", kind="images", value=len(chosen),
                            folder=Setting.FOLDER)
    return Sample(np.array([str(f) for f in chosen]), np.array(predicted), np.concatenate(vectors),
                  np.concatenate(image), np.concatenate(position), np.array(map_size))


def layout(vectors: np.ndarray, seed: int = 0, perplexity: float = 30.0, dims: int = 50) -> np.ndarray:
    """(M, 2) positions in [0, 1]²: t-SNE of the vectors' directions, after PCA to `dims` dimensions.

    Directions, not magnitudes: vectors are scaled to unit length first (t-SNE on them is t-SNE
    with the cosine distance Lucid's atlas uses), so a cell gathers one kind of response rather
    than one strength of it.
    """
    from sklearn.decomposition import PCA  # 3-4 s to import: only when an atlas is laid out
    from sklearn.manifold import TSNE

    x = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-8)
    if x.shape[1] > dims and len(x) > dims:
        x = PCA(dims, random_state=seed).fit_transform(x)
    xy = TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    return normalize(xy)


def normalize(xy: np.ndarray, percentile: float = 1.0) -> np.ndarray:
    """Scale each axis to [0, 1] between its `percentile` and 100 − `percentile`; outliers go to the edge.

    A few outliers would otherwise squeeze the whole layout into a few cells of the grid.
    """
    low, high = np.percentile(xy, [percentile, 100 - percentile], axis=0)
    return np.clip((xy - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)


def enough(count: int, grid: int) -> None:
    """Refuse a sample with fewer vectors than the grid has cells: most cells would be empty or single."""
    if count < grid * grid:
        raise ArgumentError(f"the sample has {count} activation vectors, too few for a {{grid}}={grid} atlas "
                            f"({grid * grid} cells); use {{grid}}={max(1, math.isqrt(count))} or less, more "
                            "{per_image}, or a larger {folder}", kind="grid", value=grid,
                            allowed=f"at most {max(1, math.isqrt(count))}", grid=Arg(cells, "grid"),
                            per_image=Arg(sample, "per_image"), folder=Setting.FOLDER)


@dataclass
class Cell:
    """One grid cell of the layout: which sampled vectors fell in it, and their mean (its direction)."""

    row: int
    col: int
    members: np.ndarray  # rows of the sample, in sample order
    direction: np.ndarray  # (C,) float32: the mean activation vector

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def name(self) -> str:
        return f"cell_{self.row:02d}_{self.col:02d}"


def cells(xy: np.ndarray, vectors: np.ndarray, grid: int = 20, min_count: int = 3) -> list[Cell]:
    """The cells of a `grid`×`grid` grid over the layout that hold at least `min_count` vectors.

    Row 0 is the top of the layout (y = 1), as the atlas picture shows it. A sample smaller than
    the grid, or one whose every cell is below `min_count`, is an error that says what to change.
    """
    enough(len(xy), grid)
    col = np.minimum((xy[:, 0] * grid).astype(int), grid - 1)
    row = grid - 1 - np.minimum((xy[:, 1] * grid).astype(int), grid - 1)
    key = row * grid + col
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    found = [Cell(int(key[g[0]] // grid), int(key[g[0]] % grid), g, vectors[g].mean(0))
             for g in np.split(order, bounds) if len(g) >= min_count]
    if not found:
        raise ArgumentError(f"no cell of the {{grid}}={grid} atlas holds {{min_count}}={min_count} vectors "
                            f"({len(xy)} sampled); lower {{grid}} or {{min_count}}, or sample more", kind="grid",
                            value=grid, grid=Arg(cells, "grid"), min_count=Arg(cells, "min_count"))
    return found


def whitening(vectors: np.ndarray, ridge: float = 0.01) -> np.ndarray:
    """(C, C): S, the inverse of the vectors' second moment E[a aᵀ], ridge-regularized; a cell renders S·v.

    Why: a cell's mean vector is mostly what every position of the layer shares (ReLU outputs are
    positive, and correlated channels fire together), so maximizing v itself drives every weak cell
    to the same average texture, grey high-frequency noise. S damps the directions the layer visits
    anyway, strongest of all the mean one, and leaves what sets the cell apart. The moment is
    uncentred, as Lucid's activation atlas whitens: centring would keep the mean direction, the one
    to damp. The ridge, `ridge` times the mean eigenvalue, bounds S where the sample spans few
    dimensions (fewer vectors than channels, or dead channels).
    """
    x = vectors.astype(np.float64)
    moment = x.T @ x / len(x)
    return np.linalg.inv(moment + ridge * np.trace(moment) / len(moment) * np.eye(len(moment))).astype(np.float32)


@torch.no_grad()
def head_logits(model: FeatureModel, layer: str, directions: Tensor, size: int, batch_size: int = 32) -> Tensor:
    """(n, classes): the logits when `layer`'s whole output is replaced by each direction.

    The rest of the network then sees the direction at every position, so its verdict is the
    class it attributes to the direction itself, through all of its non-linear layers.
    """
    shape = model.probe([layer], size)[layer]
    spread = directions.to(model.device, torch.float32).reshape(len(directions), -1, *(1,) * (len(shape) - 2))
    chunk: list[Tensor] = []

    def replace(module: torch.nn.Module, inputs: object, output: Tensor) -> Tensor:
        return chunk[0].expand(len(chunk[0]), *shape[1:]).to(output.dtype)

    handle = model.layer(layer).register_forward_hook(replace)
    rows = []
    try:
        with model.reading([LOGITS]) as read:
            for start in range(0, len(spread), batch_size):
                chunk[:] = [spread[start : start + batch_size]]
                zeros = torch.zeros(len(chunk[0]), model.image_channels, size, size, device=model.device)
                rows.append(read(zeros)[LOGITS].cpu())
    finally:
        handle.remove()
    return torch.cat(rows)


@torch.no_grad()
def excitation(model: FeatureModel, layer: str, images: Tensor, directions: Tensor, cossim_pow: float = 1.0,
               batch_size: int = 32, centre: bool = False) -> Tensor:
    """(images, directions): the direction objective of each unit-length direction on each image.

    Row i's largest entry is at column i when image i, rendered for direction i, excites its own
    direction more than every other's: the check that an atlas's cells show what they claim. Over
    every position of the map, averaged; with `centre`, at its centre alone (`direction_neuron`'s).
    """
    units = directions.to(model.device, torch.float32)
    units = units / units.norm(dim=1, keepdim=True).clamp(min=1e-8)
    rows = []
    with model.reading([layer]) as read:
        for start in range(0, len(images), batch_size):
            act = read(images[start : start + batch_size].to(model.device))[layer]
            act = act if act.dim() == 4 else act[:, :, None, None]
            if centre:
                act = at_position(act, None, None)[..., None, None]
            dot = torch.einsum("bchw,nc->bnhw", act, units)
            cos = dot / act.norm(dim=1, keepdim=True).clamp(min=1e-4)
            rows.append((dot * cos.clamp(min=0.1) ** cossim_pow).flatten(2).mean(2).cpu())
    return torch.cat(rows)


def sheet(tiles: dict[tuple[int, int], Image.Image], counts: dict[tuple[int, int], int], grid: int,
          side: int, opacity: bool) -> Image.Image:
    """The atlas picture: each cell's visualization at its place in the grid, empty cells white.

    With `opacity`, a cell fades into the white in proportion to how few vectors it holds (the
    square root of its share of the fullest cell's count), so sparse regions of the layout recede.
    """
    atlas = Image.new("RGB", (grid * side, grid * side), "white")
    most = max(counts.values(), default=1)
    for (row, col), tile in tiles.items():
        tile = tile.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        if opacity:
            share = math.sqrt(counts[row, col] / most)
            tile = Image.blend(Image.new("RGB", tile.size, "white"), tile, max(0.15, share))
        atlas.paste(tile, (col * side, row * side))
    return atlas
