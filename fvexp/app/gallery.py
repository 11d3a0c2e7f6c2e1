"""`task=gallery`: every channel of a layer, as one contact sheet and one browsable page.

The article ends by inviting readers to browse every channel of a network. One run per channel
pays the model load, the tracking and the start-up each time and keeps the batch at one image;
here `task.per_batch` channels (by default, on a CUDA card, as many as fit in its memory) are one
optimization of a batch whose image i maximizes channel i (`objectives.per_image`), through the same
`render` loop as every run.

Finished batches are kept in the gallery folder, named by a hash of every setting that changes
the images (`outputs/gallery/<layer>-<hash>` unless `task.dir` is set). Rerunning a command that
was interrupted, or that failed, continues with the channels still missing.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from fvexp.app.build import build, build_objective, build_param, cache_dir, check_fits, model_key, per_batch
from fvexp.app.measure import Measurer
from fvexp.app.places import launch_dir
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job, Result
from fvexp.errors import FvexpError
from fvexp.optvis import examples
from fvexp.optvis.data import open_image
from fvexp.optvis.images import contact_sheet, save
from fvexp.optvis.models import FeatureModel
from fvexp.optvis.objectives import INPUT, Objective, per_image
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose

COLUMNS = 16
EXAMPLES_SHOWN = 4  # top dataset examples beside each channel on the page
Strip = list[tuple[Image.Image, str]]  # images with their captions


def gallery(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder) -> Result:
    """Visualize the channels batch by batch into the gallery folder, then write the sheet and the page."""

    if "channel" not in cfg.objective:
        raise FvexpError("task=gallery visualizes the channels of a layer; use objective=channel or objective=neuron "
                         "with objective.layer=...")
    layer = cfg.objective.layer
    count = model.probe([layer], cfg.render.size)[layer][1]
    channels = parse_channels(cfg.task.channels, count, layer)
    transforms = build(cfg.transforms)
    size = per_batch(cfg, model, transforms, lambda n: per_image([build(cfg.objective, channel=channels[0])] * n),
                     len(channels))
    folder = Path(cfg.task.dir) if cfg.task.dir else (launch_dir() / "outputs" / "gallery" /
                                                      f"{layer}-{digest(cfg, size)}")
    folder.mkdir(parents=True, exist_ok=True)
    tracker.set_tags({"fvexp.gallery": str(folder.resolve()), "fvexp.per_batch": str(size)})
    batches = [channels[i : i + size] for i in range(0, len(channels), size)]
    done = [b for b in batches if all(finished(folder, c) for c in b)]
    if done:
        print(f"fvexp: resuming the gallery in {folder}: {sum(map(len, done))} of {len(channels)} channels are done")
    interrupted = False
    try:
        for number, batch in enumerate(batches):
            if batch not in done:
                interrupted = not render_batch(cfg, model, transforms, tracker, folder, number, batch)
            if interrupted:
                break
    except KeyboardInterrupt:  # between two batches' optimizations: what is finished is kept all the same
        interrupted = True
    shown = [c for c in channels if finished(folder, c)]
    if interrupted:
        print(f"fvexp: interrupted: {len(shown)} of {len(channels)} channels are done and kept in {folder}; run the "
              "same command again to go on from there", file=sys.stderr)
    metrics = {"gallery.channels": len(shown), "gallery.channels_requested": len(channels)}
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


def render_batch(cfg: DictConfig, model: FeatureModel, transforms: Compose, tracker: Recorder, folder: Path,
              number: int, batch: list[int]) -> bool:
    """Optimize batch `number` (image i for channel batch[i]) and keep it; False if interrupted.

    A batch is kept whole or not at all, so a rerun redoes an interrupted one.
    """
    main = per_image([build(cfg.objective, channel=c) for c in batch])
    objective = build_objective(cfg, main)
    check_fits(model, objective, transforms, cfg.render.size)
    torch.manual_seed(cfg.seed + number)
    param = build_param(cfg, model, len(batch))
    offset = number * cfg.render.steps
    result = render(model, objective, param, transforms, build(cfg.optimizer), cfg.render.steps, cfg.seed + number,
                    on_step=lambda step, value: tracker.log_step(offset + step, value), progress=cfg.progress)
    if result.interrupted:
        return False
    for c, image, value in zip(batch, result.image, final_values(model, main, result.image), strict=True):
        save(image[None], image_path(folder, c))
        image_path(folder, c).with_suffix(".json").write_text(json.dumps({"channel": c, "objective": value}))
    return True


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


def digest(cfg: DictConfig, per_batch: int) -> str:
    """A hash of every setting that changes a gallery's images (not which channels, nor tracking).

    `per_batch` is the batch size in use, which `task.per_batch=null` leaves to the device.
    """
    keys = ("model", "objective", "param", "transforms", "optimizer", "regularizers", "render", "seed", "precision",
            "channels_last")
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
                for key in keys}
    settings["objective"].pop("channel", None)
    settings["per_batch"] = per_batch
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def image_path(folder: Path, channel: int) -> Path:
    return folder / f"channel_{channel:04d}.png"


def finished(folder: Path, channel: int) -> bool:
    """A channel is finished once its value is written, which happens after its image."""
    return image_path(folder, channel).with_suffix(".json").exists()


@torch.no_grad()
def final_values(model: FeatureModel, objective: Objective, images: torch.Tensor) -> list[float]:
    """Each image's own objective on the final, untransformed batch."""
    with model.reading(objective.network_layers) as read:
        return objective({**read(images), INPUT: images}).tolist()


def write(cfg: DictConfig, folder: Path, layer: str, channels: list[int], out_dir: Path,
          tops: dict[int, Strip], per_batch: int) -> tuple[Path, Path]:
    """`gallery.png` (the contact sheet) and `index.html` (one self-contained page) in `out_dir`.

    `tops` are each channel's top dataset examples, shown under it on the page.
    """
    kept = {c: json.loads(image_path(folder, c).with_suffix(".json").read_text()) for c in channels}
    images = {c: Image.open(image_path(folder, c)).convert("RGB") for c in channels}
    cells = [(images[c], f"{c}  {kept[c]['objective']:.3g}") for c in channels]
    sheet = out_dir / "gallery.png"
    contact_sheet(cells, columns=min(COLUMNS, max(1, len(cells))), side=112).save(sheet)
    cards = []
    for c in channels:
        strip = "".join(f'<img class="ex" src="{uri(im)}" title="{html.escape(name)}">' for im, name in tops.get(c, []))
        score = kept[c].get("scores", {}).get("interpretability")
        shown = "" if score is None else f" · interpretability {score:.2f}"
        cards.append(f'<figure id="c{c}"><img src="{uri(images[c])}" alt="channel {c}">'
                     f"<figcaption>channel {c} · {kept[c]['objective']:.3g}{shown}</figcaption>{strip}</figure>")
    title = f"{html.escape(layer)}: {len(channels)} channels"
    note = (f"{cfg.render.steps} steps at {cfg.render.size} px, {per_batch} channels per batch"
            + (f"; top {EXAMPLES_SHOWN} examples of {html.escape(str(cfg.data.dir))} under each" if tops else ""))
    page = out_dir / "index.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:sans-serif;margin:16px}} figure{{display:inline-block;width:232px;margin:6px;vertical-align:top}}
figure>img{{width:224px}} img.ex{{width:54px;margin:1px}} figcaption{{font-size:13px}}</style></head>
<body><h1>{title}</h1><p>{note}</p>{"".join(cards)}</body></html>
""")
    return sheet, page


def beside_channels(cfg: DictConfig, model: FeatureModel, folder: Path,
                    channels: list[int]) -> tuple[dict[int, Strip], dict[int, dict[str, float]]]:
    """Each channel's top dataset example crops and its interpretability scores, from one pass over `data.dir`.

    The scores are kept in the channel's file beside its image with the settings that made them, so
    a resumed gallery scores only new channels, and other measure or data settings score anew.
    """
    made_by = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["measure", "data", "seed"]), resolve=True)
    unit = examples.unit_of(build(cfg.objective, channel=channels[0]), "task=gallery with data.dir")
    acts = examples.activations(model, unit, cfg.data, model_key(cfg, model), cache_dir(cfg), cfg.progress)
    crop = examples.receptive_field(model, layer=unit.layer, size=cfg.data.size)
    measurer = Measurer(cfg, model)
    tops, scores = {}, {}
    for c in channels:
        top = examples.select(acts, replace(unit, channel=c), EXAMPLES_SHOWN, 1)["top"]
        tops[c] = [(examples.picture(e, cfg.data.size, crop, acts.map_size), e.file.name) for e in top]
        record = image_path(folder, c).with_suffix(".json")
        kept = json.loads(record.read_text())
        if kept.get("scored_with") != made_by:
            image = open_image(image_path(folder, c), cfg.render.size)[None]
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


def uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=88)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()
