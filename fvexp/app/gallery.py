"""`task=gallery`: every channel of a layer, as one contact sheet and one browsable page.

The article ends by inviting readers to browse every channel of a network. `task.per_batch`
channels (by default, on a CUDA card, as many as fit in its memory) are one optimization of a batch
whose image i maximizes channel i (`fvexp.app.batches`, shared with the atlas).

Finished batches are kept in the gallery folder, named by a hash of every setting that changes
the images (`outputs/gallery/<layer>-<hash>` unless `task.dir` is set). Rerunning a command that
was interrupted, or that failed, continues with the channels still missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from fvexp.app.batches import Item, digest, finished, image_path, record_path, render_batches
from fvexp.app.build import batch_size, build, dataset_activations
from fvexp.app.measure import Measurer
from fvexp.app.pages import uri, write_page
from fvexp.app.places import launch_dir
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job, Result
from fvexp.app.schema import checked_by
from fvexp.errors import FvexpError
from fvexp.optvis import examples
from fvexp.optvis.data import open_image
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import contact_sheet
from fvexp.optvis.objectives import per_image

COLUMNS = 16
EXAMPLES_SHOWN = 4  # top dataset examples beside each channel on the page
Strip = list[tuple[Image.Image, str]]  # images with their captions


def check(cfg: DictConfig) -> None:
    """A gallery is of the channels of a layer: an objective with a channel to vary, before a model is loaded."""
    if "channel" not in cfg.objective:
        raise FvexpError("task=gallery visualizes the channels of a layer; use objective=channel or objective=neuron "
                         "with objective.layer=...")


@checked_by(check)
def gallery(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder, *, channels: Any = None,
            per_batch: int | None = None, dir: str | None = None) -> Result:
    """Visualize the channels batch by batch into the gallery folder, then write the sheet and the page.

    `channels`: None for every channel of objective.layer, a list [0, 5, 9] or a range "0-31".
    `per_batch` channels are optimized together, one image each, in one optimization (None: on a
    CUDA card as many as fit in 80 % of its memory, else `fvexp.app.build.CPU_PER_BATCH`). `dir`
    keeps the finished channels, to resume (None: outputs/gallery/<layer>-<hash>).
    """
    layer = cfg.objective.layer
    count = model.probe([layer], cfg.render.size)[layer][1]
    chosen = parse_channels(channels, count, layer)
    transforms = build(cfg.transforms)
    size = batch_size(cfg, model, transforms, lambda n: per_image([build(cfg.objective, channel=chosen[0])] * n),
                      len(chosen), per_batch)
    folder = Path(dir) if dir else launch_dir() / "outputs" / "gallery" / f"{layer}-{digest(cfg, model, size)}"
    folder.mkdir(parents=True, exist_ok=True)
    tracker.set_tags({"fvexp.gallery": str(folder.resolve()), "fvexp.per_batch": str(size)})
    items = [Item(name(c), build(cfg.objective, channel=c), {"channel": c}) for c in chosen]
    interrupted = render_batches(cfg, model, transforms, tracker, folder, items, size, "gallery", "channel")
    shown = [c for c in chosen if finished(folder, name(c))]
    metrics = {"gallery.channels": len(shown), "gallery.channels_requested": len(chosen)}
    tops: dict[int, Strip] = {}
    if cfg.data.dir and shown and not interrupted:  # a pass over a large folder is not what Ctrl-C asked for
        tops, scores = beside_channels(cfg, model, folder, shown)
        metrics |= mean_scores(scores) | {f"interpretability.channel.{c}": s["interpretability"]
                                          for c, s in scores.items() if s}
    sheet, page = write(cfg, folder, layer, shown, job.out_dir, tops, size)
    (job.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tracker.log_metrics(metrics)
    tracker.log_file(sheet)
    tracker.log_file(page)
    return Result(None, metrics=metrics, path=sheet, status="KILLED" if interrupted else "FINISHED")


def parse_channels(spec: object, count: int, layer: str) -> list[int]:
    """`None` (all), a list of channels, or a range "a-b" (inclusive), checked against the layer's count."""
    if spec is None:
        return list(range(count))
    if isinstance(spec, int):
        wanted = [spec]
    elif isinstance(spec, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", spec):
        first, last = (int(part) for part in spec.split("-"))
        if first > last:
            raise FvexpError(f"task.channels={spec!r} is a reversed range; write the lower channel first, "
                             f"e.g. task.channels={last}-{first}")
        wanted = list(range(first, last + 1))
    elif isinstance(spec, str) or not all(isinstance(c, int) for c in spec):
        raise FvexpError(f"task.channels={spec!r} is not a channel list: give null (all), a list like [0,5,9] "
                         "or a range like '0-31'")
    else:
        wanted = list(spec)
    outside = [c for c in wanted if not 0 <= c < count]
    if outside or not wanted:
        raise FvexpError(f"task.channels={spec} goes beyond layer {layer!r}, which has {count} channels: "
                         f"use channels in 0..{count - 1} (or null for all of them)")
    return sorted(set(wanted))


def name(channel: int) -> str:
    """The name a channel's image and record are kept under in the gallery folder."""
    return f"channel_{channel:04d}"


def write(cfg: DictConfig, folder: Path, layer: str, channels: list[int], out_dir: Path,
          tops: dict[int, Strip], per_batch: int) -> tuple[Path, Path]:
    """`gallery.png` (the contact sheet) and `index.html` (one self-contained page) in `out_dir`.

    `tops` are each channel's top dataset examples, shown under it on the page.
    """
    kept = {c: json.loads(record_path(folder, name(c)).read_text()) for c in channels}
    images = {c: Image.open(image_path(folder, name(c))).convert("RGB") for c in channels}
    cells = [(images[c], f"{c}  {kept[c]['objective']:.3g}") for c in channels]
    sheet = out_dir / "gallery.png"
    contact_sheet(cells, columns=min(COLUMNS, max(1, len(cells))), side=112).save(sheet)
    cards = [{"channel": c, "image": uri(images[c]), "objective": kept[c]["objective"],
              "score": kept[c].get("scores", {}).get("interpretability"),
              "examples": [(uri(image), file) for image, file in tops.get(c, [])]} for c in channels]
    page = write_page(out_dir / "index.html", "gallery.html", layer=layer, cards=cards, steps=cfg.render.steps,
                      size=cfg.render.size, per_batch=per_batch, examples=EXAMPLES_SHOWN if tops else 0,
                      data_dir=str(cfg.data.dir))
    return sheet, page


def beside_channels(cfg: DictConfig, model: FeatureModel, folder: Path,
                    channels: list[int]) -> tuple[dict[int, Strip], dict[int, dict[str, float]]]:
    """Each channel's top dataset example crops and its interpretability scores, from one pass over `data.dir`.

    The scores are kept in the channel's file beside its image with the settings that made them, so
    a resumed gallery scores only new channels, and other measure or data settings score anew.
    """
    made_by = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["measure", "data", "seed"]), resolve=True)
    unit = examples.unit_of(build(cfg.objective, channel=channels[0]), "task=gallery with data.dir")
    acts = dataset_activations(cfg, model, unit)
    crop = examples.receptive_field(model, layer=unit.layer, size=cfg.data.size)
    measurer = Measurer(cfg, model)
    tops, scores = {}, {}
    for c in channels:
        top = examples.select(acts, replace(unit, channel=c), EXAMPLES_SHOWN, 1)["top"]
        tops[c] = [(examples.picture(e, cfg.data.size, crop, acts.map_size), e.file.name) for e in top]
        record = record_path(folder, name(c))
        kept = json.loads(record.read_text())
        if kept.get("scored_with") != made_by:
            image = open_image(image_path(folder, name(c)), cfg.render.size)[None]
            kept["scores"] = measurer.unit(image, acts, replace(unit, channel=c),
                                           crop if acts.map_size != (1, 1) else None)
            kept["scored_with"] = made_by
            record.write_text(json.dumps(kept))
        scores[c] = kept["scores"]
    return tops, scores


def mean_scores(scores: dict[int, dict[str, float]]) -> dict[str, float]:
    """The channels' mean of each interpretability score (`interpretability`, `.examples`, `.random`)."""
    keys = ("interpretability", "interpretability.examples", "interpretability.random")
    return {key: sum(s[key] for s in scores.values()) / len(scores) for key in keys
            if scores and all(key in s for s in scores.values())}

