"""`task=atlas`: an activation atlas of `objective.layer` over the images of `data.dir`.

Four phases, each with its progress bar and its time in the `atlas.seconds.*` metrics: sampling
activation vectors (and each image's class), the t-SNE layout, rendering every cell that holds at
least `task.min_count` vectors as its mean direction (`task.per_batch` cells per optimization, by
the gallery's renderer, `fvexp.app.batches`), and writing the pictures and the page.

Everything the phases produce is kept in the atlas folder, named by a hash of every setting that
changes it (`outputs/atlas/<layer>-<hash>` unless `task.dir` is set): the sample, the layout and
each finished batch of cells. Rerunning an interrupted or failed command continues from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from fvexp.app.batches import Item, digest, finished, image_path, record_path, render_batches
from fvexp.app.build import batch_size, build
from fvexp.app.pages import uri, write_page
from fvexp.app.places import launch_dir
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job, Result
from fvexp.app.schema import checked_by, require, require_folder
from fvexp.errors import FvexpError
from fvexp.optvis import atlas as lib
from fvexp.optvis.data import fingerprint, open_image, scan
from fvexp.optvis.examples import crop_box, receptive_field
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import to_pil
from fvexp.optvis.metrics import high_frequency_energy
from fvexp.optvis.objectives import Objective, class_index, direction, direction_neuron
from fvexp.optvis.objectives import per_image as each_image
from fvexp.optvis.plots import scatter

TILE = 96  # pixels of a cell in atlas.png
CROP = 64  # pixels of an example crop on the page
T = TypeVar("T")


def check(cfg: DictConfig) -> None:
    """The atlas's settings before a model is loaded: a folder, a layer, counts, a sample that can fill the grid."""
    require_folder(cfg, "to sample activations from")
    task = cfg.task
    for key, least in (("grid", 1), ("per_image", 1), ("samples", 1), ("min_count", 1), ("examples", 0),
                       ("attempts", 1)):
        require(task[key] >= least, f"task.{key}", task[key], "at least 1" if least else "0 or more")
    require(task.samples >= task.per_image, "task.samples", task.samples, f"at least task.per_image={task.per_image} "
            "(the vectors of one image)")
    if not cfg.objective.get("layer"):
        raise FvexpError("task=atlas needs a layer: objective.layer=NAME (fvexp-layers lists them), e.g. "
                         "objective.layer=_blocks.8")
    fillable(task.samples, task.per_image, task.grid)  # before the sampling's minutes


@checked_by(check)
def atlas(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder, *, grid: int = 20, per_image: int = 8,
          samples: int = 4000, min_count: int = 3, per_batch: int | None = None, cossim_pow: float = 1.0,
          whiten: bool = True, class_filter: str | None = None, opacity: bool = False, examples: int = 6,
          dir: str | None = None, attempts: int = 1, centre: bool = False) -> Result:
    """Sample, lay out, render the cells batch by batch into the atlas folder, then write and log the outputs.

    The layout is cut into `grid`×`grid` cells; `per_image` activation vectors are sampled at random
    positions of each image, `samples` in all (about samples/per_image images are read, whatever the
    folder's size); cells with fewer than `min_count` vectors stay empty. `per_batch` cells are
    optimized together, one image each (None: as the gallery's). Each cell's objective is
    dot · max(0.1, cos)^`cossim_pow` averaged over the layer's map, or with `centre` at its centre
    alone (a vector layer: its output), and with `whiten` it renders S·v, S the inverse second moment
    of the sample; whitened and at the centre, it is Lucid's direction_neuron_cossim_S, with which its
    atlas rendered its icons. At the centre, cells of flat regions (sky, plain walls) find structure
    instead of mottled texture, but the others blur at their edges, which nothing constrains (README).
    `class_filter` (a class name or index) keeps only positions of images predicted as it; `opacity`
    fades sparse cells of atlas.png into white by their count; `examples` crops of the cell's images
    are shown under each cell on the page. `dir` keeps the sample, layout and finished cells (None:
    outputs/atlas/<layer>-<hash>). `attempts` renders each cell from that many random starts and keeps
    the one its own objective rates highest, as Lucid's atlas rendered its icons: a weak direction's
    start decides whether it finds the direction's structure or settles on the layer's average texture.
    """
    layer = cfg.objective.layer
    model.layer(layer)  # an unknown layer is refused before anything is made for it
    files = scan(cfg.data.dir, "data.dir")
    transforms = build(cfg.transforms)

    shape = model.probe([layer], cfg.render.size)[layer]

    def aimed(vector: list[float]) -> Objective:
        """A cell's objective: Lucid's icon objective, the direction at the map's centre; a vector layer's whole."""
        if centre and len(shape) == 4:
            return direction_neuron(layer, vector, cossim_pow)
        return direction(layer, vector, cossim_pow)

    def probe_objective(n: int) -> Objective:  # a cell's kind of objective, n times: only a CUDA card probes
        return each_image([aimed([1.0] * shape[1])] * n)

    size = batch_size(cfg, model, transforms, probe_objective, grid**2, per_batch)
    folder = Path(dir) if dir else atlas_dir(cfg, model, layer, files, size)  # a failed start leaves no folder
    tracker.set_tags({"fvexp.atlas": str(folder.resolve()), "fvexp.per_batch": str(size)})
    seconds: dict[str, float] = {}
    sample = timed(seconds, "sample", lambda: kept(folder / "sample.npz", lib.Sample.load, lambda s, p: s.save(p),
                                                   lambda: lib.sample(model, layer, files, cfg.data.size,
                                                                      per_image, samples,
                                                                      cfg.data.batch_size, cfg.data.workers,
                                                                      cfg.seed, cfg.progress)))
    whitening = lib.whitening(sample.vectors) if whiten else None  # over the whole sample, before a filter
    label = class_index(class_filter, model.classes) if class_filter is not None else None
    if label is not None:
        sample = sample.keep(np.flatnonzero(sample.predicted[sample.image] == label))
        if not len(sample.vectors):
            raise FvexpError(f"task.class_filter={class_filter}: no sampled image of data.dir is predicted "
                             "as that class; choose a class the scatter of an unfiltered atlas shows")
    enough(cfg, sample, len(files), label is not None)  # before the layout's minute, not after it
    xy = timed(seconds, "layout", lambda: kept(folder / "layout.npy", np.load, lambda a, p: np.save(p, a),
                                               lambda: laid_out(sample.vectors, cfg.seed, cfg.progress)))
    cells = lib.cells(xy, sample.vectors, grid, min_count)
    aims = [c.direction if whitening is None else whitening @ c.direction for c in cells]  # what each image maximizes
    items = [Item(attempt_name(c, a, attempts), aimed(aim.tolist()), {"count": c.count})
             for c, aim in zip(cells, aims, strict=True) for a in range(attempts)]
    interrupted = timed(seconds, "render", lambda: render_batches(cfg, model, transforms, tracker, folder, items, size,
                                                                 "atlas", "cell"))
    if attempts > 1:
        keep_best(folder, cells, attempts)
    shown = [c for c in cells if finished(folder, c.name)]
    paths = timed(seconds, "write", lambda: write(cfg, model, folder, job.out_dir, layer, sample, xy, shown, label,
                                                   opacity, examples))
    images = torch.stack([open_image(image_path(folder, c.name), cfg.render.size) for c in shown]) if shown else None
    own = at_centre = torch.zeros(0, 0)  # each image's excitation of every cell's direction: everywhere, at the centre
    if images is not None:
        raw = torch.from_numpy(np.stack([c.direction for c in shown]))
        own, at_centre = (lib.excitation(model, layer, images, raw, cossim_pow, centre=at) for at in (False, True))
    metrics = {"atlas.cells": len(shown), "atlas.cells_nonempty": len(cells), "atlas.vectors": len(sample.vectors),
               "atlas.images": int((sample.predicted >= 0).sum()),
               "atlas.own_direction_share": share(own), "atlas.own_direction_share_centre": share(at_centre),
               "atlas.high_frequency_energy": float(np.median([high_frequency_energy(i[None]) for i in images]))
               if shown else 0.0,
               **{f"atlas.seconds.{phase}": value for phase, value in seconds.items()}}
    (job.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tracker.log_metrics(metrics)
    for path in (*paths, job.out_dir / "metrics.json"):
        tracker.log_file(path)
    return Result(images, metrics=metrics, path=paths[0], status="KILLED" if interrupted else "FINISHED")


def atlas_dir(cfg: DictConfig, model: FeatureModel, layer: str, files: list[Path], per_batch: int) -> Path:
    """The folder an atlas resumes from: every setting that changes it (`per_batch` cells per
    optimization), and the folder's content, hashed."""
    root = Path(cfg.data.dir).expanduser().absolute()
    task = {key: cfg.task[key] for key in ("grid", "per_image", "samples", "min_count", "cossim_pow", "class_filter",
                                           "whiten", "attempts", "centre")}
    settings = [digest(cfg, model, per_batch), task, cfg.data.size, fingerprint(root, files)]
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return launch_dir() / "outputs" / "atlas" / f"{layer}-{key}"


def share(values: torch.Tensor) -> float:
    """The share of rows (images) whose largest value is on the diagonal (their own cell's direction)."""
    return float((values.argmax(1) == torch.arange(len(values))).float().mean()) if len(values) else 0.0


def attempt_name(cell: lib.Cell, attempt: int, attempts: int) -> str:
    """The name an attempt's image is kept under: the cell's own when there is one attempt."""
    return cell.name if attempts == 1 else f"{cell.name}-attempt{attempt}"


def keep_best(folder: Path, cells: list[lib.Cell], attempts: int) -> None:
    """Keep, as each cell's image and record, its attempt with the highest final objective, once all are finished."""
    for cell in cells:
        done = [attempt_name(cell, a, attempts) for a in range(attempts)]
        if all(finished(folder, name) for name in done) and not finished(folder, cell.name):
            best = max(done, key=lambda name: json.loads(record_path(folder, name).read_text())["objective"])
            image_path(folder, cell.name).write_bytes(image_path(folder, best).read_bytes())
            record = json.loads(record_path(folder, best).read_text()) | {"attempt": best}
            record_path(folder, cell.name).write_text(json.dumps(record))


def fillable(samples: int, per_image: int, grid: int) -> None:
    """Refuse a `task.samples` that cannot fill the grid whatever the folder holds: it alone bounds the sample."""
    most = math.ceil(samples / per_image) * per_image  # `lib.choose` reads samples/per_image images, rounded up
    if most < grid * grid:
        raise FvexpError(f"task.samples={samples} gives at most {most} activation vectors, too few for a "
                         f"task.grid={grid} atlas ({grid * grid} cells) whatever data.dir holds; use "
                         f"task.samples={grid * grid} or more, or task.grid={max(1, math.isqrt(most))} or less")


def enough(cfg: DictConfig, sample: lib.Sample, images: int, filtered: bool) -> None:
    """Refuse a sample smaller than the grid, naming the limit that binds and only the changes that lift it.

    Of a folder larger than samples/per_image images, only that many are read: `task.samples`
    binds, and neither more images nor a larger `task.per_image` would add a vector. A folder read
    whole binds by its images, and by `task.per_image` while it is below the positions of a map.
    """
    count, grid = len(sample.vectors), cfg.task.grid
    if count >= grid * grid:
        return
    read, places = len(sample.files), int(np.prod(sample.map_size))
    if read < images:
        limit = f"task.samples={cfg.task.samples} binds (it reads {read} of data.dir's {images} images)"
        lift = f"task.samples={math.ceil(cfg.task.samples * grid * grid / max(count, 1))} or more"
        if count * images < grid * grid * read:  # even read whole, the folder would not fill the grid
            lift += f" and more images in data.dir (read whole, it would give about {count * images // read})"
    else:
        limit = f"data.dir binds (all its {int((sample.predicted >= 0).sum())} readable images are sampled)"
        lift = "more images in data.dir" + (f", or task.per_image up to {places} (the positions of a map of "
                                            f"{cfg.objective.layer})" if cfg.task.per_image < places else "")
    which = f" of images predicted as {cfg.task.class_filter}" if filtered else ""
    raise FvexpError(f"the sample has {count} activation vectors{which}, too few for a task.grid={grid} atlas "
                     f"({grid * grid} cells); {limit}: use task.grid={max(1, math.isqrt(count))} or less, or {lift}")


def timed(seconds: dict[str, float], phase: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = work()
    seconds[phase] = time.perf_counter() - started
    return result


def kept(path: Path, load: Callable[[Path], T], save: Callable[[T, Path], None], make: Callable[[], T]) -> T:
    """What an earlier run of the same atlas left at `path`, or made now and left there for the next."""
    if path.exists():
        return load(path)
    made = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"partial-{path.name}")  # published whole, so a crash never leaves half a file
    save(made, partial)
    partial.rename(path)
    return made


def laid_out(vectors: np.ndarray, seed: int, progress: bool) -> np.ndarray:
    """The t-SNE layout, with a one-step bar: t-SNE reports no progress of its own."""
    with tqdm(total=1, desc=f"atlas: t-SNE layout of {len(vectors)} vectors", disable=not progress) as bar:
        xy = lib.layout(vectors, seed)
        bar.update(1)
    return xy


def write(cfg: DictConfig, model: FeatureModel, folder: Path, out_dir: Path, layer: str, sample: lib.Sample,
          xy: np.ndarray, cells: list[lib.Cell], label: int | None, opacity: bool,
          per_cell: int) -> tuple[Path, Path, Path]:
    """`atlas.png`, `scatter.png` (the layout by each image's class) and `index.html` in `out_dir`, with
    sparse cells faded (`opacity`) and `per_cell` example crops under each cell."""
    grid = cfg.task.grid
    tiles = {(c.row, c.col): Image.open(image_path(folder, c.name)).convert("RGB") for c in cells}
    counts = {(c.row, c.col): c.count for c in cells}
    paths = (out_dir / "atlas.png", out_dir / "scatter.png", out_dir / "index.html")
    lib.sheet(tiles, counts, grid, TILE, opacity).save(paths[0])
    scatter(xy, sample.predicted[sample.image], model.classes, grid).save(paths[1])
    directions = torch.from_numpy(np.stack([c.direction for c in cells])) if cells else torch.zeros(0, 1)
    logits = lib.head_logits(model, layer, directions, cfg.data.size, cfg.data.batch_size) if cells else None
    side = receptive_field(model, layer, cfg.data.size)
    cards = []
    for i, cell in enumerate(tqdm(cells, desc="atlas: page", unit="cell", disable=not cfg.progress)):
        top = int(logits[i].argmax())
        cards.append({"cell": cell, "art": uri(tiles[cell.row, cell.col]), "top": class_name(model, top),
                      "top_logit": float(logits[i, top]),
                      "label_logit": float(logits[i, label]) if label is not None else None,
                      "crops": [(uri(crop), file) for crop, file in examples(cfg, sample, cell, side, per_cell)]})
    places = {(card["cell"].row, card["cell"].col): card for card in cards}
    write_page(paths[2], "atlas.html", layer=layer, data_name=Path(cfg.data.dir).name, grid=grid, tile=TILE,
               crop=CROP, cards=cards, places=[places.get((r, c)) for r in range(grid) for c in range(grid)],
               label=class_name(model, label) if label is not None else None, vectors=len(sample.vectors),
               images=int((sample.predicted >= 0).sum()), min_count=cfg.task.min_count, steps=cfg.render.steps,
               size=cfg.render.size)
    return paths


def examples(cfg: DictConfig, sample: lib.Sample, cell: lib.Cell, side: int,
             most: int) -> list[tuple[Image.Image, str]]:
    """Up to `most` crops at the cell's positions, one per image, closest to its direction first."""
    vectors = sample.vectors[cell.members]
    cosine = vectors @ cell.direction / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(cell.direction) + 1e-8)
    shown, seen = [], set()
    for row in cell.members[np.argsort(-cosine, kind="stable")]:
        n = int(sample.image[row])
        if n in seen:
            continue
        seen.add(n)
        image = open_image(Path(sample.files[n]), cfg.data.size)
        if image is None:
            continue
        box = crop_box(tuple(sample.position[row]), tuple(sample.map_size), side, cfg.data.size)
        crop = to_pil(image).crop(box).resize((CROP, CROP), Image.Resampling.LANCZOS)
        shown.append((crop, Path(sample.files[n]).name))
        if len(shown) == most:
            break
    return shown


def class_name(model: FeatureModel, index: int) -> str:
    return model.classes[index] if 0 <= index < len(model.classes) else f"class {index}"
