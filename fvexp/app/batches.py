"""Resumable batches: the gallery's channels and the atlas's cells, many images per optimization, kept as they finish.

One run per image would pay the model load, the tracking and the start-up each time; here the
items are cut into batches of `per_batch`, and each batch is one optimization whose image i
maximizes item i's own objective (`objectives.per_image`), through the same `render` loop as every
run. A finished batch is kept in the task's folder, each item as `<name>.png` then `<name>.json`
(its record and its final objective): the record is written last, so it says the item is finished,
and a rerun of an interrupted or failed command renders only the batches that lack one.

More attempts at one item (another start of the same objective) are more items with other names:
image i of a batch starts from its own random draw.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fvexp.app.build import build, build_objective, build_param, check_fits, model_key
from fvexp.app.recorder import Recorder
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import to_pil
from fvexp.optvis.objectives import INPUT, Objective, per_image
from fvexp.optvis.render import render
from fvexp.optvis.transforms import Compose


@dataclass(frozen=True)
class Item:
    """One image of a batch: the name it is kept under, what it maximizes, and what its record says besides."""

    name: str
    objective: Objective
    record: dict[str, Any]


def render_batches(cfg: DictConfig, model: FeatureModel, transforms: Compose, tracker: Recorder, folder: Path,
                   items: list[Item], per_batch: int, task: str, unit: str) -> bool:
    """Render the batches of `items` not yet finished in `folder`, `per_batch` per optimization; True if interrupted.

    `task` and `unit` name the command and its items in what is printed ("gallery", "channel").
    """
    batches = [items[i : i + per_batch] for i in range(0, len(items), per_batch)]
    done = sum(len(b) for b in batches if all(finished(folder, item.name) for item in b))
    if done:
        print(f"fvexp: resuming the {task} in {folder}: {done} of {len(items)} {unit}s are done")
    bar = tqdm(total=len(items), initial=done, desc=f"{task}: {unit}s", unit=unit, disable=not cfg.progress)
    interrupted = False
    try:
        for number, batch in enumerate(batches):
            if not all(finished(folder, item.name) for item in batch):
                interrupted = not render_batch(cfg, model, transforms, tracker, folder, number, batch)
                if interrupted:
                    break
                bar.update(len(batch))
    except KeyboardInterrupt:  # between two batches' optimizations: the finished ones are kept all the same
        interrupted = True
    finally:
        bar.close()
    if interrupted:
        kept = sum(finished(folder, item.name) for item in items)
        print(f"fvexp: interrupted: {kept} of {len(items)} {unit}s are done and kept in {folder}; run the same "
              "command again to go on from there", file=sys.stderr)
    return interrupted


def render_batch(cfg: DictConfig, model: FeatureModel, transforms: Compose, tracker: Recorder, folder: Path,
                 number: int, batch: list[Item]) -> bool:
    """Optimize batch `number` (image i for item i) and keep it; False if interrupted.

    A batch is kept whole or not at all, so a rerun redoes an interrupted one. Its seed is
    `seed + number`, and its steps follow the earlier batches' in the tracked curve.
    """
    main = per_image([item.objective for item in batch])
    objective = build_objective(cfg, main)
    check_fits(model, objective, transforms, cfg.render.size)
    torch.manual_seed(cfg.seed + number)
    param = build_param(cfg, model, len(batch))
    offset = number * cfg.render.steps
    result = render(model, objective, param, transforms, build(cfg.optimizer), cfg.render.steps, cfg.seed + number,
                    on_step=lambda step, value: tracker.log_step(offset + step, value), progress=cfg.progress)
    if result.interrupted:
        return False
    for item, image, value in zip(batch, result.image, final_values(model, main, result.image), strict=True):
        to_pil(image).save(image_path(folder, item.name))
        record_path(folder, item.name).write_text(json.dumps({**item.record, "objective": value}))
    return True


def image_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.png"


def record_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.json"


def finished(folder: Path, name: str) -> bool:
    """An item is finished once its record is written, which happens after its image."""
    return record_path(folder, name).exists()


@torch.no_grad()
def final_values(model: FeatureModel, objective: Objective, images: torch.Tensor) -> list[float]:
    """Each image's own objective on the final, untransformed batch."""
    with model.reading(objective.network_layers) as read:
        return objective({**read(images), INPUT: images}).tolist()


def digest(cfg: DictConfig, model: FeatureModel, per_batch: int) -> str:
    """A hash of every setting that changes the images of a batch (not which items, nor tracking).

    The network is named by `model_key`, whether a config or a Python caller built it; `per_batch` is
    the batch size in use, which `task.per_batch=null` leaves to the device.
    """
    keys = ("objective", "param", "transforms", "optimizer", "regularizers", "render", "seed", "precision",
            "channels_last")
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
                for key in keys}
    settings["objective"].pop("channel", None)
    settings["model"], settings["per_batch"] = model_key(cfg, model), per_batch
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
