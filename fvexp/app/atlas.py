"""`task=atlas`: an activation atlas of `objective.layer` over the images of `data.dir`.

Four phases, each with its progress bar and its time in the `atlas.seconds.*` metrics: sampling
activation vectors (and each image's class), the t-SNE layout, rendering every cell that holds at
least `task.min_count` vectors as its mean direction (`task.per_batch` cells per optimization, as
the gallery batches channels), and writing the pictures and the page.

Everything the phases produce is kept in the atlas folder, named by a hash of every setting that
changes it (`outputs/atlas/<layer>-<hash>` unless `task.dir` is set): the sample, the layout and
each finished batch of cells. Rerunning an interrupted or failed command continues from there.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from fvexp.app.build import build, build_objective, build_param, check_fits, per_batch
from fvexp.app.gallery import digest, final_values, uri
from fvexp.app.places import launch_dir
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job, Result
from fvexp.errors import FvexpError
from fvexp.optvis import atlas as lib
from fvexp.optvis.data import fingerprint, open_image, scan
from fvexp.optvis.examples import crop_box, receptive_field
from fvexp.optvis.images import to_pil
from fvexp.optvis.metrics import high_frequency_energy
from fvexp.optvis.models import FeatureModel
from fvexp.optvis.objectives import Objective, class_index, direction, per_image
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose

TILE = 96  # pixels of a cell in atlas.png
CROP = 64  # pixels of an example crop on the page
T = TypeVar("T")


def atlas(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder) -> Result:
    """Sample, lay out, render the cells batch by batch into the atlas folder, then write and log the outputs."""
    layer = cfg.objective.get("layer")
    if not layer:
        raise FvexpError("task=atlas needs a layer: objective.layer=NAME (fvexp-layers lists them), e.g. "
                         "objective.layer=_blocks.8")
    model.layer(layer)  # an unknown layer is refused before anything is made for it
    fillable(cfg.task.samples, cfg.task.per_image, cfg.task.grid)  # before the sampling's minutes
    files = scan(cfg.data.dir)
    transforms = build(cfg.transforms)

    def probe_objective(n: int) -> Objective:  # a cell's kind of objective, n times: only a CUDA card probes
        width = model.probe([layer], cfg.render.size)[layer][1]
        return per_image([direction(layer, [1.0] * width, cfg.task.cossim_pow)] * n)

    size = per_batch(cfg, model, transforms, probe_objective, cfg.task.grid**2)
    folder = atlas_dir(cfg, layer, files, size)  # made by the first file kept in it: a failed start leaves none
    tracker.set_tags({"fvexp.atlas": str(folder.resolve()), "fvexp.per_batch": str(size)})
    seconds: dict[str, float] = {}
    sample = timed(seconds, "sample", lambda: kept(folder / "sample.npz", lib.Sample.load, lambda s, p: s.save(p),
                                                   lambda: lib.sample(model, layer, files, cfg.data.size,
                                                                      cfg.task.per_image, cfg.task.samples,
                                                                      cfg.data.batch_size, cfg.data.workers,
                                                                      cfg.seed, cfg.progress)))
    whiten = lib.whitening(sample.vectors) if cfg.task.whiten else None  # over the whole sample, before a filter
    label = class_index(cfg.task.class_filter, model.classes) if cfg.task.class_filter is not None else None
    if label is not None:
        sample = sample.keep(np.flatnonzero(sample.predicted[sample.image] == label))
        if not len(sample.vectors):
            raise FvexpError(f"task.class_filter={cfg.task.class_filter}: no sampled image of data.dir is predicted "
                             "as that class; choose a class the scatter of an unfiltered atlas shows")
    enough(cfg, sample, len(files), label is not None)  # before the layout's minute, not after it
    xy = timed(seconds, "layout", lambda: kept(folder / "layout.npy", np.load, lambda a, p: np.save(p, a),
                                               lambda: laid_out(sample.vectors, cfg.seed, cfg.progress)))
    cells = lib.cells(xy, sample.vectors, cfg.task.grid, cfg.task.min_count)
    started = time.perf_counter()
    interrupted = render_cells(cfg, model, transforms, size, tracker, folder, layer, cells, whiten)
    seconds["render"] = time.perf_counter() - started
    shown = [c for c in cells if finished(folder, c)]
    if interrupted:
        print(f"fvexp: interrupted: {len(shown)} of {len(cells)} cells are done and kept in {folder}; run the same "
              "command again to go on from there", file=sys.stderr)
    paths = timed(seconds, "write", lambda: write(cfg, model, folder, job.out_dir, layer, sample, xy, shown, label))
    images = torch.stack([open_image(image_path(folder, c), cfg.render.size) for c in shown]) if shown else None
    own = lib.excitation(model, layer, images, torch.from_numpy(np.stack([c.direction for c in shown])),
                         cfg.task.cossim_pow) if shown else torch.zeros(0, 0)
    metrics = {"atlas.cells": len(shown), "atlas.cells_nonempty": len(cells), "atlas.vectors": len(sample.vectors),
               "atlas.images": int((sample.predicted >= 0).sum()),
               "atlas.own_direction_share": float((own.argmax(1) == torch.arange(len(own))).float().mean())
               if len(own) else 0.0,
               "atlas.high_frequency_energy": float(np.median([high_frequency_energy(i[None]) for i in images]))
               if shown else 0.0,
               **{f"atlas.seconds.{phase}": value for phase, value in seconds.items()}}
    (job.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tracker.log_metrics(metrics)
    for path in (*paths, job.out_dir / "metrics.json"):
        tracker.log_file(path)
    return Result(images, metrics=metrics, path=paths[0], status="KILLED" if interrupted else "FINISHED")


def atlas_dir(cfg: DictConfig, layer: str, files: list[Path], per_batch: int) -> Path:
    """The folder an atlas resumes from: every setting that changes it (`per_batch` cells per
    optimization), and the folder's content, hashed."""
    if cfg.task.dir:
        return Path(cfg.task.dir)
    root = Path(cfg.data.dir).expanduser().absolute()
    task = {key: cfg.task[key] for key in ("grid", "per_image", "samples", "min_count", "cossim_pow", "class_filter",
                                           "whiten")}
    settings = [digest(cfg, per_batch), task, cfg.data.size, fingerprint(root, files)]
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return launch_dir() / "outputs" / "atlas" / f"{layer}-{key}"


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


def render_cells(cfg: DictConfig, model: FeatureModel, transforms: Compose, per_batch: int, tracker: Recorder,
                 folder: Path, layer: str, cells: list[lib.Cell], whiten: np.ndarray | None) -> bool:
    """Render the cells not yet finished, `per_batch` per optimization; True if interrupted.

    `whiten` (`lib.whitening`'s S, or None) maps each cell's direction to the one its image maximizes.
    """
    groups = [cells[i : i + per_batch] for i in range(0, len(cells), per_batch)]
    done = sum(len(g) for g in groups if all(finished(folder, c) for c in g))
    if done:
        print(f"fvexp: resuming the atlas in {folder}: {done} of {len(cells)} cells are done")
    bar = tqdm(total=len(cells), initial=done, desc="atlas: cells", unit="cell", disable=not cfg.progress)
    try:
        for number, group in enumerate(groups):
            if not all(finished(folder, c) for c in group):
                if not render_group(cfg, model, transforms, tracker, folder, layer, number, group, whiten):
                    return True
                bar.update(len(group))
    except KeyboardInterrupt:  # between two batches' optimizations: the finished ones are kept all the same
        return True
    finally:
        bar.close()
    return False


def render_group(cfg: DictConfig, model: FeatureModel, transforms: Compose, tracker: Recorder, folder: Path,
                 layer: str, number: int, group: list[lib.Cell], whiten: np.ndarray | None) -> bool:
    """Optimize image i of one batch for cell i's (whitened) direction and keep the batch; False if interrupted."""
    aims = [c.direction if whiten is None else whiten @ c.direction for c in group]
    main = per_image([direction(layer, aim.tolist(), cfg.task.cossim_pow) for aim in aims])
    objective = build_objective(cfg, main)
    check_fits(model, objective, transforms, cfg.render.size)
    torch.manual_seed(cfg.seed + number)
    offset = number * cfg.render.steps
    result = render(model, objective, build_param(cfg, model, len(group)), transforms, build(cfg.optimizer),
                    cfg.render.steps, cfg.seed + number, progress=cfg.progress,
                    on_step=lambda step, value: tracker.log_step(offset + step, value))
    if result.interrupted:
        return False
    for cell, image, value in zip(group, result.image, final_values(model, main, result.image), strict=True):
        to_pil(image).save(image_path(folder, cell))
        image_path(folder, cell).with_suffix(".json").write_text(json.dumps({"count": cell.count, "objective": value}))
    return True


def image_path(folder: Path, cell: lib.Cell) -> Path:
    return folder / f"{cell.name}.png"


def finished(folder: Path, cell: lib.Cell) -> bool:
    """A cell is finished once its value is written, which happens after its image."""
    return image_path(folder, cell).with_suffix(".json").exists()


def write(cfg: DictConfig, model: FeatureModel, folder: Path, out_dir: Path, layer: str, sample: lib.Sample,
          xy: np.ndarray, cells: list[lib.Cell], label: int | None) -> tuple[Path, Path, Path]:
    """`atlas.png`, `scatter.png` (the layout by each image's class) and `index.html` in `out_dir`."""
    grid = cfg.task.grid
    tiles = {(c.row, c.col): Image.open(image_path(folder, c)).convert("RGB") for c in cells}
    counts = {(c.row, c.col): c.count for c in cells}
    paths = (out_dir / "atlas.png", out_dir / "scatter.png", out_dir / "index.html")
    lib.sheet(tiles, counts, grid, TILE, cfg.task.opacity).save(paths[0])
    lib.scatter(xy, sample.predicted[sample.image], model.classes, grid).save(paths[1])
    directions = torch.from_numpy(np.stack([c.direction for c in cells])) if cells else torch.zeros(0, 1)
    logits = lib.head_logits(model, layer, directions, cfg.data.size, cfg.data.batch_size) if cells else None
    side = receptive_field(model, layer, cfg.data.size)
    links, cards = [], []
    for i, cell in enumerate(tqdm(cells, desc="atlas: page", unit="cell", disable=not cfg.progress)):
        top = int(logits[i].argmax())
        verdict = f"{_escape(class_name(model, top))} (logit {logits[i, top]:.3g})"
        if label is not None:
            verdict += f"; {_escape(class_name(model, label))}: {logits[i, label]:.3g}"
        art = uri(tiles[cell.row, cell.col])
        links.append((cell.row, cell.col, f'<a href="#{cell.name}" title="{cell.count} · {verdict}">'
                                          f'<img src="{art}"><b>{cell.count}</b></a>'))
        crops = "".join(f'<img src="{uri(crop)}" title="{_escape(name)}">'
                        for crop, name in examples(cfg, sample, cell, side))
        cards.append(f'<section id="{cell.name}"><img class="vis" src="{art}"> row {cell.row}, column {cell.col}: '
                     f"<b>{cell.count}</b> positions; the head says {verdict}<br>{crops}</section>")
    placed = {(r, c): link for r, c, link in links}
    grid_html = "".join(placed.get((r, c), "<span></span>") for r in range(grid) for c in range(grid))
    where = f" of images predicted {_escape(class_name(model, label))}" if label is not None else ""
    title = f"{_escape(layer)}: activation atlas of {_escape(Path(cfg.data.dir).name)}"
    note = (f"{len(sample.vectors)} activation vectors{where} from {int((sample.predicted >= 0).sum())} images, "
            f"laid out by t-SNE on a {grid}×{grid} grid; {len(cells)} cells with at least {cfg.task.min_count} "
            f"vectors, each rendered as its mean direction ({cfg.render.steps} steps at {cfg.render.size} px). "
            "Under each cell: its count, the class the network's head gives its direction, and crops of the "
            "images at the positions that fell in it.")
    paths[2].write_text(page(title, note, grid_html, "".join(cards), grid))
    return paths


def examples(cfg: DictConfig, sample: lib.Sample, cell: lib.Cell, side: int) -> list[tuple[Image.Image, str]]:
    """Up to `task.examples` crops at the cell's positions, one per image, closest to its direction first."""
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
        if len(shown) == cfg.task.examples:
            break
    return shown


def class_name(model: FeatureModel, index: int) -> str:
    return model.classes[index] if 0 <= index < len(model.classes) else f"class {index}"


def page(title: str, note: str, grid_html: str, cards: str, grid: int) -> str:
    """The self-contained page: the atlas as a grid of linked cells, then one card per cell."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:sans-serif;margin:16px}} .atlas{{display:grid;grid-template-columns:repeat({grid},{TILE}px);gap:1px}}
.atlas a,.atlas span{{width:{TILE}px;height:{TILE}px;position:relative;display:block;background:#fafafa}}
.atlas img{{width:{TILE}px;height:{TILE}px}} .atlas b{{position:absolute;left:2px;bottom:2px;font-size:10px;
background:#fffc;padding:0 2px}} section{{margin:10px 0;padding:6px;border-top:1px solid #ddd}}
section img{{width:{CROP}px;height:{CROP}px;margin:1px}} section img.vis{{width:128px;height:128px}}
:target{{background:#fff6d0}}</style></head>
<body><h1>{title}</h1><p>{note}</p><div class="atlas">{grid_html}</div>{cards}</body></html>
"""


def _escape(value: Any) -> str:
    return html.escape(str(value))
