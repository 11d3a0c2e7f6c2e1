"""Learned priors in a run: the `train_prior` task, and the terms whose settings come from the run's data.

`task=train_prior data.dir=FOLDER` trains the library's denoising autoencoder (`fvexp.optvis.priors`)
on crops of the folder and prints the prior file's path last; runs point at it with
`regularizers.prior.path=` or `param=prior param.path=`, and record its sha256 as `prior.sha256`.
The feature-statistics and path terms need the run's unit and data (the unit's top examples, the
start image, the layers on the way to the unit): `data_terms` computes them, and they are passed
to the terms as arguments when the objective is built (the config stays as given), so the
library's terms stay plain functions of files and layer names.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fvexp.app.build import dataset_activations
from fvexp.app.environment import sha256
from fvexp.app.recorder import Recorder
from fvexp.app.result import Job, Result
from fvexp.app.schema import checked_by, require, require_folder
from fvexp.errors import FvexpError
from fvexp.optvis import examples, priors
from fvexp.optvis.data import batches, scan
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import contact_sheet, to_pil
from fvexp.optvis.objectives import Objective
from fvexp.optvis.sanity import path_layers

LOG_EVERY = 10  # training steps per point of the loss curve


def check_training(cfg: DictConfig) -> None:
    """A folder to train on, a crop that fits data.size, and positive counts: before a model is loaded."""
    require_folder(cfg, "to train the prior on")
    settings = cfg.task
    stride = 2 ** settings["depth"]
    require(settings["steps"] >= 3, "task.steps", settings["steps"], "at least 3 (the learning rate warms up, then "
            "anneals)")
    for key in ("batch", "width", "latent", "depth"):
        require(settings[key] >= 1, f"task.{key}", settings[key], "at least 1")
    require(settings["lr"] > 0, "task.lr", settings["lr"], "a positive learning rate")
    require(0 <= settings["noise"] <= 1, "task.noise", settings["noise"], "the largest noise sd, between 0 and 1")
    require(stride <= settings["crop"] <= cfg.data.size and settings["crop"] % stride == 0, "task.crop",
            settings["crop"], f"a multiple of 2^task.depth={stride} between {stride} and data.size={cfg.data.size}")
    require(cfg.data.size % stride == 0, "data.size", cfg.data.size,
            f"a multiple of 2^task.depth={stride}, so that the prior's decoder can draw images of that size")


@checked_by(check_training)
def train_prior(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder, **settings: Any) -> Result:
    """`task=train_prior`: train the prior on data.dir, save `prior.pt` and a picture of what it denoises.

    `settings` are `fvexp.optvis.priors.train`'s (crop, steps, batch, noise, lr, width, latent, depth),
    which the schema of `task.*` reads from that function, where they are written once.
    """
    images = folder_images(cfg)
    held_out, train_images = images[: max(1, len(images) // 10)], images[max(1, len(images) // 10):]
    losses: list[float] = []

    def on_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step % LOG_EVERY == 0 or step == settings["steps"]:
            tracker.log_step(step, sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:]))

    started = time.perf_counter()
    net = priors.train(train_images if len(train_images) else images, seed=cfg.seed, on_step=on_step, **settings)
    seconds = time.perf_counter() - started
    partial = stopped(net, settings["steps"])
    losses = losses[: net.steps_done]  # a step interrupted after its loss was read is not in the weights
    tail = losses[-max(1, len(losses) // 10):]
    metrics = {"train_loss": sum(tail) / len(tail), "train_loss_first": losses[0], "train_seconds": seconds,
               "train_images": len(images), "train_steps": net.steps_done,
               "held_out_psnr": priors.denoising_psnr(net, held_out, settings["noise"]),
               "held_out_noisy_psnr": priors.denoising_psnr(torch.nn.Identity(), held_out, settings["noise"])}
    path = priors.save(net, job.out_dir / "prior.pt", cfg.data.size, {"data.dir": str(cfg.data.dir),
                                                                      "images": len(images), **partial, **metrics})
    (job.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    sheet = job.out_dir / "denoised.png"
    with torch.no_grad():
        shown = held_out[:4]
        noisy = (shown + settings["noise"] * torch.randn(shown.shape, generator=torch.Generator().manual_seed(0)))
        cells = [(to_pil(x), label) for row in zip(shown, noisy.clamp(0, 1), net(noisy.clamp(0, 1)), strict=True)
                 for x, label in zip(row, ("held-out photo", "with noise", "denoised"), strict=True)]
    contact_sheet(cells, columns=3, side=160).save(sheet)
    tracker.log_metrics(metrics)
    tracker.set_tags({"prior.sha256": sha256(path), **partial})
    for file in (path, sheet, job.out_dir / "metrics.json"):
        tracker.log_file(file)
    return Result(None, losses, metrics, path, "KILLED" if partial else "FINISHED")


def stopped(net: priors.Autoencoder, steps: int) -> dict[str, str]:
    """`{"prior.partial": ...}` for a training that Ctrl-C or SIGTERM ended early, said on stderr; else nothing.

    The network of the last whole step is a usable prior, kept as a render keeps its last image;
    the mark, in the file's `meta` and in the run's tags, says it is not the prior that was asked
    for. Stopped before the first step, there is nothing to keep: the run ends KILLED without a file.
    """
    if net.steps_done == steps:
        return {}
    if not net.steps_done:
        raise KeyboardInterrupt
    print(f"fvexp: interrupted at step {net.steps_done} of {steps}; keeping the prior as it was after that step, "
          "marked partial", file=sys.stderr)
    return {"prior.partial": f"stopped after step {net.steps_done} of {steps}"}


def folder_images(cfg: DictConfig) -> torch.Tensor:
    """Every readable image of data.dir at data.size, as one (N, 3, size, size) tensor, in file order."""
    kept = []
    files = scan(cfg.data.dir, "data.dir")
    for images, readable in batches(files, cfg.data.size, cfg.data.batch_size, cfg.data.workers):
        kept.append(images[readable])
    images = torch.cat(kept)
    if len(images) < 2:
        raise FvexpError(f"task=train_prior needs at least 2 readable images in data.dir={cfg.data.dir!r}, and there "
                         f"are {len(images)}")
    return images


def prior_files(cfg: DictConfig) -> list[str]:
    """The prior files the run reads, once each: the penalty's and the parameterization's."""
    files = [cfg.regularizers.prior.path] if cfg.regularizers.prior.weight else []
    if cfg.param.get("_target_", "").endswith(".PriorLatent"):
        files.append(cfg.param.path)
    return list(dict.fromkeys(f for f in files if f))


def prior_tags(cfg: DictConfig) -> dict[str, str]:
    """`prior.sha256` of the prior file(s) the run reads (comma-separated if two differ); none if there are none."""
    files = [f for f in prior_files(cfg) if Path(f).expanduser().is_file()]
    return {"prior.sha256": ",".join(sha256(Path(f).expanduser()) for f in files)} if files else {}


def data_terms(cfg: DictConfig, model: FeatureModel, main: Objective) -> dict[str, dict[str, Any]]:
    """The arguments the feature-statistics and path terms take from the run, by their key in `regularizers`:
    the unit's top examples and layers (`feature_stats`), the start image and the layers to the unit (`path`)."""
    stats, path = cfg.regularizers.feature_stats, cfg.regularizers.path
    computed: dict[str, dict[str, Any]] = {}
    if stats.weight:
        unit = examples.unit_of(main, "regularizers.feature_stats")
        computed["feature_stats"] = {"layers": list(stats.layers) or spatial_path(model, unit.layer)[-1:],
                                     "images": list(stats.images) or top_examples(cfg, model, main),
                                     "size": cfg.data.size}
    if path.weight:
        unit = examples.unit_of(main, "regularizers.path")
        computed["path"] = {"image": path.image or cfg.param.image,
                            "layers": list(path.layers) or spatial_path(model, unit.layer), "size": cfg.render.size}
    return computed


def spatial_path(model: FeatureModel, layer: str) -> list[str]:
    """The layers on the way to `layer` (sanity's path) whose output is a map of more than one position.

    What an image looks like to the network: for a class, the maps before the pooling, not the
    pooled vector or the logits, which the objective itself moves.
    """
    names = path_layers(model, layer)
    shapes = model.probe(names, model.min_size * 4)
    return [name for name in names if len(shapes[name]) == 4 and shapes[name][-1] * shapes[name][-2] > 1]


def top_examples(cfg: DictConfig, model: FeatureModel, main: Objective) -> list[str]:
    """The files of the unit's top data.k examples in data.dir, from the activation cache."""
    unit = examples.unit_of(main, "regularizers.feature_stats")
    acts = dataset_activations(cfg, model, unit)
    return [str(e.file) for e in examples.select(acts, unit, cfg.data.k, 1)["top"]]
