"""One fvexp job: build the pieces from the config, check them, render, save and record.

Whatever happens, what the run produced is kept: the images are saved, the MLflow run ends
FINISHED, FAILED (with the error as a tag) or KILLED, and bad input gets one clear message.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fvexp import examples, sanity
from fvexp.config import thresholds, validate
from fvexp.core import NonFiniteObjective, render
from fvexp.data import open_image
from fvexp.environment import describe, sha256
from fvexp.environment import files as environment_files
from fvexp.errors import FvexpError
from fvexp.images import picture, save
from fvexp.metrics import quality
from fvexp.models import FeatureModel
from fvexp.objectives import Objective
from fvexp.params import fit
from fvexp.sweeps import sweep_key
from fvexp.tracking import NullTracker, launch_dir
from fvexp.transforms import Compose

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SIZE = 256  # a multiple of every stride, to read each layer's stride from its map size


def run_job(cfg: DictConfig) -> int:
    """Hydra's job: run, print the image path last, and return the process exit code."""
    hydra = HydraConfig.get()
    sweep = hydra.mode == RunMode.MULTIRUN
    tags = {"fvexp.experiment": hydra.runtime.choices.get("experiment") or "",
            "fvexp.ablation": hydra.runtime.choices.get("ablation") or "",
            "fvexp.sweep": sweep_key(hydra) if sweep else "",
            "fvexp.job": str(hydra.job.num) if sweep else ""}
    try:
        image, interrupted = run(cfg, Path(hydra.runtime.output_dir), list(hydra.overrides.task),
                                 name=hydra.job.override_dirname or None, tags=tags)
    except NonFiniteObjective as error:
        print(error.kept)
        print(f"fvexp: error: {error}", file=sys.stderr)
        return 1
    except FvexpError as error:
        print(f"fvexp: error: {error}", file=sys.stderr)
        return 2
    print(image)
    if interrupted and sweep:
        raise KeyboardInterrupt  # this job is saved; Ctrl-C also stops the rest of the sweep
    return 130 if interrupted else 0


def run(cfg: DictConfig, out_dir: Path, overrides: list[str], name: str | None = None,
        tags: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """Render the configured visualization into `out_dir`; return the image path and if interrupted."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    settings = OmegaConf.to_container(cfg, resolve=True)
    tracker: NullTracker = build(cfg.tracking)
    tracker.start(name, dict(flatten(settings)), {**describe(device), **(tags or {}), "overrides": " ".join(overrides)},
                  {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True),  # in order: transforms run in it
                   "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(overrides)), **environment_files()})
    try:
        image, interrupted = _job(cfg, out_dir, device, tracker)
    except KeyboardInterrupt:
        tracker.finish("KILLED", "interrupted")
        raise
    except NonFiniteObjective as error:
        error.kept = save(error.image, out_dir / "image.png")
        tracker.log_file(error.kept)
        tracker.finish("FAILED", str(error))
        raise
    except Exception as error:
        tracker.finish("FAILED", f"{type(error).__name__}: {error}")
        raise
    tracker.finish("KILLED" if interrupted else "FINISHED")
    return image, interrupted


def _job(cfg: DictConfig, out_dir: Path, device: torch.device, tracker: NullTracker) -> tuple[Path, bool]:
    """Load the model and run the configured task (`task=render`, `dataset_examples` or `gallery`)."""
    from fvexp.gallery import gallery

    torch.manual_seed(cfg.seed)
    model: FeatureModel = build(cfg.model).to(device)
    model.autocast = PRECISIONS[cfg.precision]
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if model.weights_path:
        tracker.set_tags({"weights.sha256": sha256(model.weights_path)})
    task = {"render": _render, "dataset_examples": _examples, "gallery": gallery}[cfg.task.name]
    return task(cfg, model, out_dir, tracker)


def _render(cfg: DictConfig, model: FeatureModel, out_dir: Path, tracker: NullTracker) -> tuple[Path, bool]:
    main: Objective = build(cfg.objective)
    objective = main + sum(weight * build(term) for weight, term in extra_terms(cfg, main))
    transforms: Compose = build(cfg.transforms)
    check_fits(model, objective, transforms, cfg.render.size)
    param = build_param(cfg, model, cfg.render.batch)
    if cfg.param.init == "dataset_examples":
        tracker.log_metrics(start_from_examples(cfg, model, main, param, out_dir))
        tracker.log_file(out_dir / "init.json")

    def keep(step: int, images: torch.Tensor) -> None:
        save(images, out_dir / "steps" / f"step_{step:05d}.png")
        tracker.log_image(picture(images), step)

    started = time.perf_counter()
    result = render(model, objective, param, transforms, build(cfg.optimizer), cfg.render.steps, cfg.seed,
                    thresholds=thresholds(cfg), on_step=tracker.log_step, on_threshold=keep,
                    progress=cfg.progress)
    seconds = time.perf_counter() - started
    image = save(result.image, out_dir / "image.png")
    tracker.log_file(image)
    metrics = {"objective_final": result.values[-1] if result.values else float("nan"),
               "steps_done": len(result.values), "seconds_per_step": seconds / max(1, len(result.values)),
               **quality(model, main, result.image, result.values, cfg.seed, gram_layer(cfg, main))}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    tracker.log_metrics(metrics)
    if cfg.data.dir and main.unit:
        examples_beside(cfg, model, main, out_dir, tracker, result.image)
    return image, result.interrupted


def _examples(cfg: DictConfig, model: FeatureModel, out_dir: Path, tracker: NullTracker) -> tuple[Path, bool]:
    """`task=dataset_examples`: rank the folder by the objective's unit, no optimization."""
    main: Objective = build(cfg.objective)
    examples.unit_of(main, "task=dataset_examples")
    main.prepare(model, model.probe(main.network_layers, cfg.data.size))
    return examples_beside(cfg, model, main, out_dir, tracker)["overview"], False


def examples_beside(cfg: DictConfig, model: FeatureModel, main: Objective, out_dir: Path, tracker: NullTracker,
                    optimized: torch.Tensor | None = None) -> dict[str, Path]:
    """Dataset examples of the objective's unit into `out_dir`, and with an optimized image the sanity check."""
    unit = examples.unit_of(main, "data.dir")
    acts = examples.activations(model, unit, cfg.data, model_key(cfg), cache_dir(cfg), cfg.progress)
    chosen = examples.select(acts, unit, cfg.data.k, cfg.data.spectrum)
    shown = None
    if optimized is not None:
        with torch.no_grad(), model.reading([unit.layer]) as read:
            value = examples.reduce(read(optimized[:1])[unit.layer], unit)[0][0, unit.channel]
        shown = (optimized[0], value.item())
    crop = examples.receptive_field(model, unit.layer, cfg.data.size)
    paths = examples.write(out_dir, acts, unit, chosen, cfg.data, crop, shown)
    metrics = {"examples.images": len(acts.files), "examples.unreadable": len(acts.unreadable),
               "examples.cached": float(acts.cached), "examples.top1": chosen["top"][0].value,
               "examples.crop_px": crop}
    if optimized is not None:
        metrics |= sanity.check(model, unit.layer, optimized, acts, chosen["top"], cfg.data.size, cfg.seed, out_dir)
    tracker.log_metrics(metrics)
    tracker.log_file(out_dir / "examples", "examples")
    tracker.log_file(paths["overview"])
    if acts.unreadable:
        print(f"fvexp: {len(acts.unreadable)} of {len(acts.files)} files could not be read as images and were "
              f"skipped, e.g. {acts.unreadable[0]}", file=sys.stderr)
    return paths


def start_from_examples(cfg: DictConfig, model: FeatureModel, main: Objective, param: torch.nn.Module,
                        out_dir: Path) -> dict[str, float]:
    """Fit `param` to the top `render.batch` examples (Nguyen et al.'s diverse starts).

    Which files seeded which image, and how closely (PSNR), goes to `init.json`.
    """
    unit = examples.unit_of(main, "param.init=dataset_examples")
    acts = examples.activations(model, unit, cfg.data, model_key(cfg), cache_dir(cfg), cfg.progress)
    top = examples.select(acts, unit, cfg.render.batch, 1)["top"]
    if len(top) < cfg.render.batch:
        raise FvexpError(f"param.init=dataset_examples needs render.batch={cfg.render.batch} readable images in "
                         f"data.dir, and there are {len(top)}")
    images = torch.stack([open_image(e.file, cfg.render.size) for e in top]).to(model.device)
    psnr = fit(param, images)
    (out_dir / "init.json").write_text(json.dumps({"files": [str(e.file) for e in top], "psnr_db": psnr}, indent=2))
    return {"init_psnr": psnr}


def model_key(cfg: DictConfig) -> str:
    """What identifies the network for the activation cache: its config, weights checksum and precision."""
    weights = cfg.model.get("weights_path")
    return json.dumps([OmegaConf.to_container(cfg.model, resolve=True), sha256(weights) if weights else None,
                       cfg.precision], sort_keys=True, default=str)


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else launch_dir() / "outputs" / "cache"


def build_param(cfg: DictConfig, model: FeatureModel, batch: int) -> torch.nn.Module:
    """The parameterization of `batch` images at `render.size` for the model's input channels, on its device.

    `param.init` is fvexp's, not the class's.
    """
    node = OmegaConf.masked_copy(cfg.param, [k for k in cfg.param if k != "init"])
    return build(node)(batch=batch, size=cfg.render.size, channels=model.image_channels).to(model.device)


def extra_terms(cfg: DictConfig, main: Objective) -> Iterator[tuple[float, DictConfig]]:
    """(weight, config) of every regularizer, diversity and alignment term whose weight is not 0.

    Diversity and alignment default to the main objective's layer.
    """
    for term in cfg.regularizers.values():
        if term.weight:
            yield term.weight, OmegaConf.masked_copy(term, [k for k in term if k != "weight"])
    for name in ("diversity", "alignment"):
        term = cfg[name]
        if term.weight:
            layer = term.layer or sole_layer(main, f"{name}.layer")
            settings = OmegaConf.masked_copy(term, [k for k in term if k not in ("weight", "layer")])
            yield term.weight, OmegaConf.merge(settings, {"layer": layer})


def sole_layer(objective: Objective, key: str) -> str:
    layers = objective.network_layers
    if len(layers) != 1:
        raise FvexpError(f"{key} is needed: the objective reads {len(layers)} layers ({', '.join(layers)}), "
                         "so there is no single layer to default to")
    return layers[0]


def gram_layer(cfg: DictConfig, main: Objective) -> str | None:
    """The layer whose Gram matrices measure a batch's diversity: the diversity term's, or the objective's."""
    layers = main.network_layers
    return cfg.diversity.layer or (layers[0] if len(layers) == 1 else None)


def check_fits(model: FeatureModel, objective: Objective, transforms: Compose, size: int) -> None:
    """Reject an image too small for the objective's layers, then let the objective check itself.

    A layer of stride s needs at least s pixels of image for one full position, both in the image
    itself and in what the model sees after the transforms (which may crop it).
    """
    layers = objective.network_layers
    at_probe = model.probe(layers, PROBE_SIZE)
    needs = {layer: PROBE_SIZE // shape[-1] if len(shape) == 4 else model.min_size
             for layer, shape in at_probe.items()}
    layer, need = max(needs.items(), key=lambda item: item[1], default=("", 1))
    seen = transforms.min_output(size)
    if size < need or seen < need:
        minimum = next(s for s in range(need, 100 * need + size) if transforms.min_output(s) >= need)
        raise FvexpError(
            f"render.size={size} is too small for layer {layer!r}, which needs at least {need} px of image "
            f"(after the transforms the model may see only {max(seen, 0)} px); use render.size>={minimum}"
        )
    objective.prepare(model, model.probe(layers, seen))


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one; a named device must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FvexpError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FvexpError(f"device={name} but this machine has no usable CUDA GPU; use device=auto or device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise FvexpError(f"device={name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FvexpError("device=mps but MPS is not available here; use device=auto or device=cpu")
    return device


def build(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but an fvexp error inside a constructor reaches the user unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, FvexpError):
            raise error.__cause__ from None
        raise FvexpError(str(error).replace("\n", " ")) from None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config as (dotted.key, value) pairs, the form MLflow params take."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
