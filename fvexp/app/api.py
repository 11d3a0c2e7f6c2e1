"""fvexp from Python: `visualize` a network in memory, or `run` exactly what the command line runs.

Both compose the command line's own config (`conf/`, through Hydra's Compose API), so their
defaults are the command line's, and both run the job through `fvexp.app.job.execute`, so a run
recorded from Python is recorded exactly as a command-line run is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from fvexp.app.job import execute
from fvexp.app.overrides import composition_error
from fvexp.app.places import config_dir
from fvexp.app.result import Job, Result
from fvexp.app.schema import TASK_ARGUMENTS, register, search_folders
from fvexp.app.signatures import parameters
from fvexp.errors import FvexpError, unknown
from fvexp.optvis.features import LOGITS, FeatureModel
from fvexp.optvis.models import own_input_size
from fvexp.optvis.objectives import Objective
from fvexp.optvis.weights import class_names

GROUPS = ("param", "transforms", "optimizer", "task")  # keywords that pick a config option by name
SHORT = {"steps": "render.steps", "size": "render.size", "batch": "render.batch",
         "thresholds": "render.thresholds", "lr": "optimizer.lr"}
TOP = ("seed", "device", "threads", "precision", "channels_last", "progress")


def visualize(model: nn.Module, objective: str | Objective, *, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, classes: str | Sequence[str] = (), logits_layer: str = "",
              track: bool | str = False, out_dir: str | Path | None = None, overrides: Sequence[str] = (),
              **settings: Any) -> Result:
    """Visualize `objective` on `model`, any `torch.nn.Module` in memory, with the command line's defaults.

    `objective` is "layer:channel" (`"layer4.1:7"`), "logits:LABEL" (a class by name or index),
    or an `Objective` built from `fvexp.optvis` pieces (`channel("layer3", 5) - 0.1 * l1()`).
    `mean`/`std` are the network's input normalization (None: it takes [0, 1] images as they
    are); `classes` its class names (a list, a text file with one per line, or "imagenet"), for
    "logits:goldfish". Settings are keywords: `steps`, `size`,
    `batch`, `thresholds`, `lr`, `seed`, `device` (default: the model's), `threads`, `precision`,
    `channels_last`, `progress`, and a config option by name for `param`, `transforms`,
    `optimizer` (`param="pixel"`); any other key goes in `overrides` as on the command line
    (`overrides=["regularizers.tv.weight=50"]`).

    The model is left as it was found: its `requires_grad` flags, train/eval mode and device.
    `track=True` records the run in MLflow's default store (`outputs/mlflow.db`), a string in that
    tracking URI. With `out_dir` the run folder is kept there (`image.png`, `metrics.json`, ...);
    without it, the images are only in the result.
    """
    if not isinstance(model, nn.Module):
        raise FvexpError(f"model must be a torch.nn.Module (a network in memory), not {_described(model)}; for a "
                         "model by name use fvexp.run('model=torchvision', 'model.name=resnet18', ...)")
    if not isinstance(objective, str | Objective):
        raise FvexpError(f"objective must be 'layer:channel', 'logits:label' or an Objective (fvexp.optvis."
                         f"objectives), not {_described(objective)}")
    return _in_memory(model, objective, mean=mean, std=std, classes=classes, logits_layer=logits_layer, track=track,
                      out_dir=out_dir, overrides=overrides, **settings)


def _in_memory(model: nn.Module, objective: str | Objective | None, *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, classes: str | Sequence[str] = (), logits_layer: str = "",
               track: bool | str = False, out_dir: str | Path | None = None, overrides: Sequence[str] = (),
               **settings: Any) -> Result:
    """`visualize`'s run; with `objective` None, the objective the overrides configure (an atlas's layer)."""
    unknown_keys = [k for k in settings if k not in (*GROUPS, *SHORT, *TOP)]
    if unknown_keys:
        raise unknown("setting", unknown_keys[0], [*GROUPS, *SHORT, *TOP],
                      hint="Other keys go in overrides=['key=value', ...], as on the command line")
    settings.setdefault("device", _device_of(model))
    choices = [f"{group}={settings.pop(group)}" for group in GROUPS if group in settings]
    tracking = ["tracking=none"] if not track else ["tracking=mlflow"]
    if isinstance(track, str):
        tracking.append(f"tracking.uri={track}")
    named = _objective_overrides(objective) if isinstance(objective, str) else []
    cfg = _compose([*choices, *named, *tracking, *overrides])
    for key, value in settings.items():
        try:
            OmegaConf.update(cfg, SHORT.get(key, key), value, merge=False)
        except OmegaConfBaseException as error:
            raise FvexpError(f"{key}={value!r}: {one_line(error)}") from None
    if named and "classes" in cfg.objective:  # "logits:goldfish" reads the names given here, not model=*'s
        cfg.objective.classes = classes if isinstance(classes, str) else list(classes)
    names = class_names(classes) if isinstance(classes, str) else list(classes)
    with _borrowed(model):
        wrapped = model if isinstance(model, FeatureModel) else FeatureModel(
            model, *_normalization(model, mean, std), names, logits_layer, input_size=own_input_size(model))
        record = [*choices, *named, *overrides, *(f"{k}={v}" for k, v in settings.items())]
        with _run_folder(out_dir) as folder:
            result = execute(cfg, Job(folder, record, name=None, model=wrapped,
                                      objective=objective if isinstance(objective, Objective) else None))
            if out_dir is None:
                result.path = None
            else:
                result.run_dir = folder
    return result


def atlas(model: nn.Module, layer: str, folder: str | Path, *, overrides: Sequence[str] = (),
          **settings: Any) -> Result:
    """An activation atlas of `layer` over the images of `folder`: `task=atlas` on a network in memory.

    Keywords are the atlas's settings (`grid`, `per_image`, `samples`, `min_count`, `per_batch`,
    `cossim_pow`, `whiten`, `class_filter`, `opacity`, `examples`, `dir`, `attempts`; see
    `fvexp.app.atlas.atlas`) and `visualize`'s (`mean`, `std`, `classes`, `steps`, `size`, `track`, `out_dir`, ...). The
    result's `image` holds the rendered cells (one image per non-empty cell); with `out_dir`,
    `atlas.png`, `scatter.png` and `index.html` are written there. The sample, the layout and the
    finished cells are kept in `outputs/atlas/` (or `dir`), so a second call resumes the first.
    """
    own = [p.name for p in parameters("fvexp.app.atlas.atlas") if p.name not in TASK_ARGUMENTS]
    task = [f"task.{key}={json.dumps(settings.pop(key))}" for key in own if key in settings]
    return _in_memory(model, None, task="atlas", overrides=[f"objective.layer={json.dumps(layer)}",
                                                            f"data.dir={json.dumps(str(folder))}", *task, *overrides],
                      **settings)


def run(*overrides: str) -> Result:
    """The job `fvexp OVERRIDES...` runs, from Python: same config, run folder and MLflow record.

    Returns the result with `.run_dir` (the run folder under `outputs/runs/`) and `.run_id` (the
    MLflow run, None with `tracking=none`). Sweeps (`-m`, `experiment=...`) stay on the command line:
    loop over `run(...)` calls for a sweep from Python.
    """
    if "-m" in overrides or "--multirun" in overrides:
        raise FvexpError("fvexp.run runs one job; for a sweep use the command line (fvexp -m ...) or call run() "
                         "once per setting")
    cfg = _compose(list(overrides), hydra=True)
    if cfg.hydra.mode == RunMode.MULTIRUN:
        raise FvexpError(f"{' '.join(overrides)} is a sweep preset; run it on the command line (fvexp "
                         f"{' '.join(overrides)}), or pick one of its settings for fvexp.run")
    folder = Path(cfg.hydra.run.dir).resolve()
    choices = cfg.hydra.runtime.choices
    tags = {"fvexp.experiment": choices.get("experiment") or "", "fvexp.ablation": choices.get("ablation") or "",
            "fvexp.sweep": "", "fvexp.job": ""}
    skip = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    name = ",".join(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in skip) or None
    with open_dict(cfg):
        del cfg.hydra
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    result = execute(cfg, Job(folder, list(overrides), name, tags))
    result.run_dir = folder
    return result


def _compose(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The command line's config with `overrides`; Hydra's composition errors become one-line `FvexpError`s."""
    register(search_folders(overrides))
    caller = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()  # called from inside a Hydra app: compose fvexp's configs, then give it back
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException) as error:
        raise composition_error(error) from None
    finally:
        if caller is not None:
            GlobalHydra.instance().initialize(caller)
    if hydra:
        cfg.hydra.run.dir = str(cfg.hydra.run.dir)  # resolve ${now:...} once, as Hydra does for a run
    return cfg


def one_line(error: Exception) -> str:
    """Hydra's or OmegaConf's message without its indented detail lines (full_key, object_type)."""
    lines = [line.strip() for line in str(error).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(("full_key", "object_type",
                                                                            "reference_type")))


def _objective_overrides(spec: str) -> list[str]:
    """"layer:channel" as a channel objective, "logits:label" as a class logit."""
    layer, sep, unit = spec.rpartition(":")
    if not sep or not layer or not unit:
        raise FvexpError(f"objective {spec!r} is not 'layer:channel' (e.g. '_blocks.8:5') or 'logits:label' "
                         "(e.g. 'logits:goldfish'); or pass an Objective (fvexp.optvis.objectives)")
    if unit.isdigit() and layer != LOGITS:
        return ["objective=channel", f"objective.layer={layer}", f"objective.channel={unit}"]
    return ["objective=class_logit", f"objective.layer={layer}", f"objective.label={unit}"]


def _normalization(model: nn.Module, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> tuple[list[float], list[float]]:
    """The input normalization, one value per channel the first convolution takes, or none at all (mean 0, std 1).

    Checked here, where the argument can be named: a wrong count otherwise surfaces as a shape
    error deep inside the network's first convolution.
    """
    if (mean is None) != (std is None):
        raise FvexpError("give both mean and std (the network's input normalization), or neither")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
    channels = first.in_channels if isinstance(first, nn.Conv2d) else None
    if mean is None or std is None:
        return [0.0] * (channels or 3), [1.0] * (channels or 3)
    means, stds = _values("mean", mean), _values("std", std)
    if len(means) != len(stds) or (channels is not None and len(means) != channels):
        wanted = (f"the network's first convolution takes {channels}-channel images: give {channels} values each"
                  if channels is not None else "give the same number of values for both, one per input channel")
        given = (f"mean and std have {len(means)} value(s) each" if len(means) == len(stds)
                 else f"mean has {len(means)} value(s) and std {len(stds)}")
        raise FvexpError(f"{given}; {wanted} (or neither, for images in [0, 1] as they are)")
    if min(stds) <= 0:
        raise FvexpError(f"std={stds}: every value must be above 0 (the input is divided by it)")
    return means, stds


def _values(name: str, value: object) -> list[float]:
    """`value` as a list of numbers, or an error naming the argument."""
    try:
        return [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise FvexpError(f"{name} must be a list of numbers, one per input channel of the network, e.g. "
                         f"[0.485, 0.456, 0.406]; got {value!r:.60}") from None


@contextlib.contextmanager
def _borrowed(model: nn.Module) -> Iterator[None]:
    """Give `model` back as it was lent: gradients on its weights, train/eval mode of every module,
    and the very tensors of its weights (a run may lay them out channels-last for speed)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    weights = [(p, p.data) for p in model.parameters()]
    buffers = [(m, dict(m._buffers)) for m in model.modules()]  # `Module.to` swaps buffers, not their data
    try:
        yield
    finally:
        for parameter, data in weights:
            parameter.data = data
        for module, kept in buffers:
            module._buffers.update(kept)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def _run_folder(out_dir: str | Path | None) -> Iterator[Path]:
    if out_dir is not None:
        yield Path(out_dir)
        return
    with tempfile.TemporaryDirectory(prefix="fvexp-") as folder:
        yield Path(folder)


def _device_of(model: nn.Module) -> str:
    """Where the model lives, so that a visualization never moves a user's network."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return "cpu" if tensor is None else str(tensor.device)


def _described(value: object) -> str:
    """What was passed instead, in a few words: "the function 'f'", "the str 'resnet18'"."""
    return f"the {type(value).__name__} {repr(getattr(value, '__name__', value))[:60]}"
