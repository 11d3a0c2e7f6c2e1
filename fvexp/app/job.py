"""One fvexp job: build the pieces from the config, check them, run the task, save and record.

Whatever happens, what the run produced is kept: the images are saved, the recorder's run ends
FINISHED, FAILED (with the error as a tag) or KILLED, and bad input gets one clear message. The
command line (`fvexp.app.cli`) and the Python API (`fvexp.app.api`) both run jobs through `execute`.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from fvexp.app.build import (
    build,
    build_model,
    build_objective,
    build_param,
    check_fits,
    configure,
    dataset_activations,
    flatten,
    gram_layer,
    resolve_device,
)
from fvexp.app.environment import describe, sha256
from fvexp.app.environment import files as environment_files
from fvexp.app.keeping import Keeper
from fvexp.app.keys import said
from fvexp.app.measure import Measurer
from fvexp.app.priors import data_terms, prior_tags
from fvexp.app.recorder import Guarded, Recorder
from fvexp.app.result import Job, Result
from fvexp.app.schema import checked_by, require_folder, task_call, thresholds, validate
from fvexp.credentials import redact
from fvexp.errors import FvexpError
from fvexp.optvis import examples, sanity
from fvexp.optvis.data import open_image
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.images import load, picture, save
from fvexp.optvis.metrics import quality
from fvexp.optvis.objectives import Objective
from fvexp.optvis.params import fit
from fvexp.optvis.render import NonFiniteObjective, render


def execute(cfg: DictConfig, job: Job) -> Result:
    """Run the configured task into `job.out_dir` and record it; bad input raises `FvexpError`."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    try:
        job.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. out_dir under a file, from Python
        raise FvexpError(unwritable(error)) from None
    settings = recorded(cfg, job)
    built: Recorder = build(cfg.tracking)
    tracker = Guarded(built, getattr(built, "on_error", "warn"), redact(str(getattr(built, "uri", ""))))
    process = {"fvexp.host": socket.gethostname(), "fvexp.pid": str(os.getpid())}  # to find runs whose process died
    try:  # tags and files are functions: git and a pip freeze run on the recorder's thread, if it records
        tracker.start(job.name, {key: redact(str(value)) for key, value in flatten(settings)},
                      lambda: {**describe(device), **job.tags, **process, "overrides": redact(" ".join(job.overrides))},
                      lambda: {name: redact(text) for name, text in {
                          "config.yaml": OmegaConf.to_yaml(settings),  # in order: transforms run in it
                          "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(job.overrides)),
                          **environment_files()}.items()})
        torch.manual_seed(cfg.seed)
        model = configure(job.model, cfg, device) if job.model is not None else build_model(cfg, device)
        if model.weights_path:
            tracker.set_tags({"weights.sha256": sha256(model.weights_path)})
        tracker.set_tags(prior_tags(cfg))
        result = run_task(cfg, model, job, tracker)
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted")
        raise
    except OSError as error:
        if error.errno not in UNWRITABLE:
            tracker.finish("FAILED", f"{type(error).__name__}: {error}")
            raise
        tracker.finish("FAILED", unwritable(error))
        raise FvexpError(unwritable(error)) from None
    except Exception as error:
        shown = said(error, cfg)  # the library's words in the config's keys
        tracker.finish("FAILED", str(shown) if isinstance(shown, FvexpError) else f"{type(error).__name__}: {error}")
        if shown is error:
            raise
        raise shown from None
    tracker.finish(result.status, result.error)
    result.run_id = tracker.run_id
    return result


def recorded(cfg: DictConfig, job: Job) -> dict[str, Any]:
    """The run's settings as its record keeps them: the config, with a network or an objective that a Python
    caller passed in memory described in the place of the config's."""
    settings: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[assignment]
    if job.model is not None:
        net = job.model
        settings["model"] = {"in_memory": type(net.net).__name__, "mean": net.mean.flatten().tolist(),
                             "std": net.std.flatten().tolist(), "logits_layer": net.logits_layer,
                             "classes": list(net.classes)}
    if job.objective is not None:
        settings["objective"] = {"in_memory": job.objective.name}
    return settings


def run_task(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder) -> Result:
    """The function the task's YAML names (`conf/task/<name>.yaml`), called with its settings (`task.*`)."""
    return build(task_call(cfg.task), _partial_=True)(cfg, model, job, tracker)


UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ENOTDIR,
              errno.EEXIST, errno.EFBIG)  # a folder that cannot take the run's files: the user's to fix


def unwritable(error: OSError) -> str:
    """A write that failed for a reason of the folder's (full, read-only, a name too long) as one line."""
    return (f"cannot write {error.filename or 'the run folder'} ({error.strerror or error}); free space there, or "
            "choose a folder you can write (hydra.run.dir, or out_dir from Python)")


def render_task(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder) -> Result:
    """`task=render`: optimize the image, save it and its metrics, and show dataset examples beside it."""
    main: Objective = job.objective if job.objective is not None else build(cfg.objective)
    objective = build_objective(cfg, main, data_terms(cfg, model, main))
    transforms = build(cfg.transforms)
    check_fits(model, objective, transforms, cfg.render.size)
    param = build_param(cfg, model, cfg.render.batch)
    measurer = Measurer(cfg, model)
    if cfg.param.init in ("dataset_examples", "image"):
        tracker.log_metrics(start_from(cfg, model, main, param, job.out_dir))
        tracker.log_file(job.out_dir / "init.json")

    folder = Keeper(job.out_dir)

    def keep(step: int, images: Tensor) -> None:
        folder.write(lambda: save(images, job.out_dir / "steps" / f"step_{step:05d}.png"))
        tracker.log_image(picture(images), step)

    started = time.perf_counter()
    try:
        rendered = render(model, objective, param, transforms, build(cfg.optimizer), cfg.render.steps, cfg.seed,
                          thresholds=thresholds(cfg), on_step=tracker.log_step, on_threshold=keep,
                          progress=cfg.progress)
    except NonFiniteObjective as error:
        last = error.image
        kept = folder.final(lambda: save(last, job.out_dir / "image.png"), tracker.run_id is not None)
        tracker.log_file(kept)
        return Result(error.image, error.values, path=kept, status="FAILED", error=str(said(error, cfg)))
    seconds = time.perf_counter() - started
    image = folder.final(lambda: save(rendered.image, job.out_dir / "image.png"), tracker.run_id is not None)
    tracker.log_file(image)
    values = rendered.values
    metrics = {"objective_final": values[-1] if values else float("nan"), "steps_done": len(values),
               "seconds_per_step": seconds / max(1, len(values)),
               **quality(model, main, rendered.image, values, cfg.seed, gram_layer(cfg, main))}
    metrics |= measurer.transfer(main, rendered.image)
    folder.write(lambda: write_metrics(job.out_dir, metrics))
    tracker.log_metrics(metrics)
    if cfg.data.dir and main.unit:
        metrics |= examples_beside(cfg, model, main, job.out_dir, tracker, rendered.image, measurer)[1]
        folder.write(lambda: write_metrics(job.out_dir, metrics))
    return Result(rendered.image, values, metrics, image, "KILLED" if rendered.interrupted else "FINISHED")


def write_metrics(out_dir: Path, metrics: dict[str, float]) -> Path:
    """`metrics.json` of the run folder: the numbers MLflow also gets, for scripts that read folders."""
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path


def check_examples(cfg: DictConfig) -> None:
    require_folder(cfg, "for dataset examples")


@checked_by(check_examples)
def examples_task(cfg: DictConfig, model: FeatureModel, job: Job, tracker: Recorder) -> Result:
    """`task=dataset_examples`: rank the folder by the objective's unit, no optimization."""
    main: Objective = job.objective if job.objective is not None else build(cfg.objective)
    examples.unit_of(main, "task=dataset_examples")
    main.prepare(model, model.probe(main.network_layers, cfg.data.size))
    paths, metrics = examples_beside(cfg, model, main, job.out_dir, tracker)
    return Result(None, metrics=metrics, path=paths["overview"])


def examples_beside(cfg: DictConfig, model: FeatureModel, main: Objective, out_dir: Path, tracker: Recorder,
                    optimized: Tensor | None = None,
                    measurer: Measurer | None = None) -> tuple[dict[str, Path], dict[str, float]]:
    """Dataset examples of the objective's unit into `out_dir`, logged; their files and metrics.

    With an optimized image, also the sanity check and (with a `measurer`) the interpretability score.
    """
    unit = examples.unit_of(main, "data.dir")
    acts = dataset_activations(cfg, model, unit)
    chosen = examples.select(acts, unit, cfg.data.k, cfg.data.spectrum)
    shown = None
    if optimized is not None:
        with torch.no_grad(), model.reading([unit.layer]) as read:
            value = examples.reduce(read(optimized[:1])[unit.layer], unit)[0][0, unit.channel]
        shown = (optimized[0], value.item())
    crop = examples.receptive_field(model, unit.layer, cfg.data.size)
    paths = examples.write(out_dir, acts, unit, chosen, cfg.data.size, crop, shown)
    metrics = {"examples.images": len(acts.files), "examples.unreadable": len(acts.unreadable),
               "examples.cached": float(acts.cached), "examples.top1": chosen["top"][0].value,
               "examples.crop_px": crop}
    if optimized is not None:
        metrics |= sanity.check(model, unit.layer, optimized, acts, chosen["top"], cfg.data.size, cfg.seed, out_dir)
        if measurer is not None:
            metrics |= measurer.unit(optimized, acts, unit, crop if acts.map_size != (1, 1) else None)
    tracker.log_metrics(metrics)
    tracker.log_file(out_dir / "examples", "examples")
    tracker.log_file(paths["overview"])
    if acts.unreadable:
        print(f"fvexp: {len(acts.unreadable)} of {len(acts.files)} files could not be read as images and were "
              f"skipped, e.g. {acts.unreadable[0]}", file=sys.stderr)
    return paths, metrics


def start_from(cfg: DictConfig, model: FeatureModel, main: Objective, param: torch.nn.Module,
               out_dir: Path) -> dict[str, float]:
    """Fit `param` to images before the optimization starts.

    `param.init=dataset_examples`: each image to one of the unit's top `render.batch` examples (Nguyen
    et al.'s diverse starts); `param.init=image`: every image to `param.image` (feature accentuation's
    start). Which files seeded the images, and how closely (PSNR), goes to `init.json`.
    """
    if cfg.param.init == "dataset_examples":
        unit = examples.unit_of(main, "param.init=dataset_examples")
        acts = dataset_activations(cfg, model, unit)
        files = [e.file for e in examples.select(acts, unit, cfg.render.batch, 1)["top"]]
        if len(files) < cfg.render.batch:
            raise FvexpError(f"param.init=dataset_examples needs render.batch={cfg.render.batch} readable images in "
                             f"data.dir, and there are {len(files)}")
        images = torch.stack([open_image(file, cfg.render.size) for file in files])
    else:
        files = [cfg.param.image]
        images = load(cfg.param.image, cfg.render.size, key="param.image").expand(cfg.render.batch, -1, -1, -1)
    psnr = fit(param, images.to(model.device))
    (out_dir / "init.json").write_text(json.dumps({"files": [str(f) for f in files], "psnr_db": psnr}, indent=2))
    return {"init_psnr": psnr}
