"""Typed schemas for every config group, so a typo or a wrong type fails when the config is composed.

Each option's YAML under `conf/` extends one of these schemas through its defaults list; the schema
fixes the keys and their types, the YAML only sets values. Ranges that OmegaConf cannot express
(a positive step count, say) are checked by `validate` before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from fvexp.errors import FvexpError


@dataclass
class RenderConfig:
    steps: int = 512
    size: int = 224
    batch: int = 1
    thresholds: list[int] | None = None  # steps whose images are kept; None: powers of two and the last


@dataclass
class EfficientNetLiteConfig:
    _target_: str = "fvexp.models.efficientnet_lite"
    variant: str = "lite0"
    mean: list[float] = field(default_factory=lambda: [0.498, 0.498, 0.498])
    std: list[float] = field(default_factory=lambda: [0.502, 0.502, 0.502])
    classes: str = "imagenet"
    logits_layer: str = "_fc"
    min_size: int = 32


@dataclass
class TorchvisionConfig:
    _target_: str = "fvexp.models.torchvision_model"
    name: str = "googlenet"
    weights: str | None = "DEFAULT"  # a torchvision weights entry from the hub cache; null: random weights
    weights_path: str | None = None  # a state dict file; wins over `weights`
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    classes: str = "imagenet"
    logits_layer: str = "fc"
    min_size: int = 32


@dataclass
class CustomModelConfig:
    _target_: str = "fvexp.models.custom"
    net: Any = None  # {_target_: your.module.make_net, ...}: any callable returning an nn.Module
    weights_path: str | None = None
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # one value each: grayscale
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    classes: str = ""  # "imagenet", a text file with one class name per line, or "" for none
    logits_layer: str = ""
    min_size: int = 8


@dataclass
class ChannelConfig:
    _target_: str = "fvexp.objectives.channel"
    layer: str = "_blocks.8"
    channel: int = 0


@dataclass
class NeuronConfig(ChannelConfig):
    _target_: str = "fvexp.objectives.neuron"
    x: int | None = None  # None: the centre of the layer's map
    y: int | None = None


@dataclass
class LayerConfig:
    _target_: str = "fvexp.objectives.layer"
    layer: str = "_blocks.8"


@dataclass
class ClassLogitConfig:
    _target_: str = "fvexp.objectives.class_logit"
    label: Any = "goldfish"  # a class name or an index
    layer: str = "${model.logits_layer}"
    classes: str = "${model.classes}"


@dataclass
class ClassProbConfig(ClassLogitConfig):
    _target_: str = "fvexp.objectives.class_prob"


@dataclass
class ClassLogSumExpConfig(ClassLogitConfig):
    _target_: str = "fvexp.objectives.class_logsumexp"


@dataclass
class DirectionConfig:
    _target_: str = "fvexp.objectives.direction"
    layer: str = "_blocks.8"
    vector: list[float] = field(default_factory=list)  # one weight per channel
    cossim_pow: float = 0.0


@dataclass
class RandomDirectionConfig:
    _target_: str = "fvexp.objectives.random_direction"
    layer: str = "_blocks.8"
    seed: int = 0
    cossim_pow: float = 0.0


@dataclass
class ArithmeticConfig:
    _target_: str = "fvexp.objectives.combine"
    _convert_: str = "all"
    terms: list[Any] = field(default_factory=list)  # [{weight: 1.0, objective: {_target_: ...}}, ...]


@dataclass
class InterpolateConfig:
    _target_: str = "fvexp.objectives.interpolate"
    a: Any = None  # an objective node
    b: Any = None


@dataclass
class StyleConfig:
    _target_: str = "fvexp.objectives.style"
    layers: list[str] = field(default_factory=lambda: ["_blocks.2", "_blocks.4", "_blocks.8", "_blocks.12"])
    image: str = "???"  # path to the reference image
    size: int = "${render.size}"  # type: ignore[assignment]


@dataclass
class InversionConfig:
    _target_: str = "fvexp.objectives.inversion"
    layer: str = "_blocks.8"
    image: str = "???"
    size: int = "${render.size}"  # type: ignore[assignment]


@dataclass
class ParamConfig:
    _partial_: bool = True  # batch and size come from `render`
    init: str = "noise"  # noise | dataset_examples: start the batch from the top examples of data.dir


@dataclass
class PixelConfig(ParamConfig):
    _target_: str = "fvexp.params.Pixel"
    sd: float = 0.01
    decorrelate: bool = False
    grad_blur: float = 0.0  # sigma in pixels of the gradient blur; 0: off


@dataclass
class LowResConfig(ParamConfig):
    _target_: str = "fvexp.params.LowRes"
    factor: int = 4
    sd: float = 0.01
    decorrelate: bool = True


@dataclass
class LaplacianConfig(ParamConfig):
    _target_: str = "fvexp.params.LaplacianPyramid"
    levels: int = 4
    sd: float = 0.01
    decorrelate: bool = True


@dataclass
class SharedConfig(ParamConfig):
    _target_: str = "fvexp.params.Shared"
    base: Any = None  # a parameterization node with _partial_: true
    shared: list[list[int]] = field(default_factory=lambda: [[1, 2], [1, 4], [1, 8], [2, 8], [1, 16], [2, 16]])


@dataclass
class CPPNConfig(ParamConfig):
    _target_: str = "fvexp.params.CPPN"
    hidden: int = 24
    layers: int = 8
    decorrelate: bool = False


@dataclass
class MacoConfig(ParamConfig):
    _target_: str = "fvexp.params.Maco"
    spectrum_from: Any = None  # None: a 1/f model; else an image folder or a list of image files
    decay_power: float = 1.0
    decorrelate: bool = True


@dataclass
class FourierConfig(ParamConfig):
    _target_: str = "fvexp.params.Fourier"
    sd: float = 0.01
    decay_power: float = 1.0
    decorrelate: bool = True


@dataclass
class TransformsConfig:
    _target_: str = "fvexp.transforms.Compose"
    pieces: dict[str, Any] = field(default_factory=dict)  # name -> piece, in order; null drops a piece


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True  # the parameters come from the parameterization
    lr: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class SteepestDescentConfig:
    _target_: str = "fvexp.optimizers.SteepestDescent"
    _partial_: bool = True
    lr: float = 0.05
    metric: str = "l2"  # l2 | linf | decorrelated
    decay_power: float = 1.0


@dataclass
class L1Term:
    _target_: str = "fvexp.regularizers.l1"
    weight: float = 0.0
    constant: float = 0.5


@dataclass
class L2Term(L1Term):
    _target_: str = "fvexp.regularizers.l2"


@dataclass
class TVTerm:
    _target_: str = "fvexp.regularizers.total_variation"
    weight: float = 0.0


@dataclass
class BlurTerm:
    _target_: str = "fvexp.regularizers.blur"
    weight: float = 0.0
    sigma: float = 1.0


@dataclass
class BilateralTerm:
    _target_: str = "fvexp.regularizers.bilateral"
    weight: float = 0.0
    sigma_space: float = 1.5
    sigma_color: float = 0.1
    radius: int = 2


@dataclass
class RegularizersConfig:
    """Frequency penalties on the image, each added as −weight·penalty; weight 0 turns one off."""

    l1: L1Term = field(default_factory=L1Term)
    l2: L2Term = field(default_factory=L2Term)
    tv: TVTerm = field(default_factory=TVTerm)
    blur: BlurTerm = field(default_factory=BlurTerm)
    bilateral: BilateralTerm = field(default_factory=BilateralTerm)


@dataclass
class DiversityTerm:
    _target_: str = "fvexp.objectives.diversity"
    weight: float = 0.0
    layer: str | None = None  # None: the objective's layer


@dataclass
class AlignmentTerm:
    _target_: str = "fvexp.objectives.alignment"
    weight: float = 0.0
    layer: str | None = None
    decay_ratio: float = 2.0


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
    name: str = "render"  # render | dataset_examples | gallery


@dataclass
class GalleryConfig(TaskConfig):
    name: str = "gallery"
    channels: Any = None  # None: every channel of objective.layer; a list [0, 5, 9] or a range "0-31"
    per_batch: int = 16  # channels optimized together, one image each, in one optimization
    dir: str | None = None  # where finished channels are kept to resume; None: outputs/gallery/<layer>-<hash>


@dataclass
class MlflowConfig:
    _target_: str = "fvexp.tracking.MlflowTracker"
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a SQLite store in ./outputs
    experiment: str = "fvexp"
    run_name: str | None = None


@dataclass
class NoTrackingConfig:
    _target_: str = "fvexp.tracking.NullTracker"


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto: the GPU when there is one, else the CPU
    threads: int | None = None  # torch CPU threads; None: torch's default (set 1 for parallel joblib jobs)
    precision: str = "fp32"  # fp32 | bf16 | fp16: mixed precision (autocast) for the network's forward pass
    channels_last: bool = False  # NHWC memory layout, often faster for convolutions on GPUs
    progress: bool = True
    render: RenderConfig = field(default_factory=RenderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: Any = None
    regularizers: RegularizersConfig = field(default_factory=RegularizersConfig)
    diversity: DiversityTerm = field(default_factory=DiversityTerm)
    alignment: AlignmentTerm = field(default_factory=AlignmentTerm)
    model: Any = None
    objective: Any = None
    param: Any = None
    transforms: Any = None
    optimizer: Any = None
    tracking: Any = None


TASKS = ("render", "dataset_examples", "gallery")

SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"efficientnet_lite": EfficientNetLiteConfig, "torchvision": TorchvisionConfig,
              "custom": CustomModelConfig},
    "objective": {
        "neuron": NeuronConfig,
        "channel": ChannelConfig,
        "layer": LayerConfig,
        "class_logit": ClassLogitConfig,
        "class_prob": ClassProbConfig,
        "class_logsumexp": ClassLogSumExpConfig,
        "direction": DirectionConfig,
        "random_direction": RandomDirectionConfig,
        "arithmetic": ArithmeticConfig,
        "interpolate": InterpolateConfig,
        "style": StyleConfig,
        "inversion": InversionConfig,
    },
    "param": {"pixel": PixelConfig, "fourier": FourierConfig, "lowres": LowResConfig, "laplacian": LaplacianConfig,
              "shared": SharedConfig, "cppn": CPPNConfig, "maco": MacoConfig},
    "transforms": {"compose": TransformsConfig},
    "optimizer": {"adam": AdamConfig, "sgd": SGDConfig, "steepest": SteepestDescentConfig},
    "tracking": {"mlflow": MlflowConfig, "none": NoTrackingConfig},
    "task": {"render": TaskConfig, "dataset_examples": TaskConfig, "gallery": GalleryConfig},
}


def register() -> None:
    """Put the schemas in Hydra's ConfigStore as `fvexp_schema` and `schema_<group>_<name>`.

    They are stored outside any config group so that `--help` and tab completion list only the
    options a user picks from, not the schemas those options extend.
    """
    store = ConfigStore.instance()
    store.store(name="fvexp_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(name=f"schema_{group}_{name}", node=schema)


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot express: values still missing, and ranges; name the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise FvexpError(f"{', '.join(missing)} must be set, e.g. fvexp ... {missing[0]}=VALUE")
    render = cfg.render
    _require(cfg.precision in ("fp32", "bf16", "fp16"), "precision", cfg.precision, "one of fp32, bf16, fp16")
    _require(render.steps >= 1, "render.steps", render.steps, "a positive number of optimization steps")
    _require(render.size >= 1, "render.size", render.size, "the image side in pixels, at least 1")
    _require(render.batch >= 1, "render.batch", render.batch, "the number of images, at least 1")
    for step in render.thresholds or ():
        _require(1 <= step <= render.steps, "render.thresholds", list(render.thresholds),
                 f"steps between 1 and render.steps={render.steps}")
    _require(cfg.task.name in TASKS, "task.name", cfg.task.name, f"one of {', '.join(TASKS)}")
    _require(cfg.param.init in ("noise", "dataset_examples"), "param.init", cfg.param.init,
             "noise or dataset_examples")
    if cfg.param.init == "dataset_examples" or cfg.task.name == "dataset_examples":
        _require(cfg.data.dir is not None, "data.dir", None, "an image folder for dataset examples, e.g. "
                 "data.dir=/data/imagenet/val (python -m fvexp.demo DIR builds a small one)")
    _require(cfg.data.k >= 1, "data.k", cfg.data.k, "at least 1 example")
    _require(cfg.data.spectrum >= 1, "data.spectrum", cfg.data.spectrum, "at least 1 example")
    _require(cfg.data.size >= 1, "data.size", cfg.data.size, "the image side in pixels, at least 1")
    _require(cfg.data.batch_size >= 1, "data.batch_size", cfg.data.batch_size, "at least 1")
    _require(cfg.data.workers >= 0, "data.workers", cfg.data.workers, "0 or more processes")
    if "per_batch" in cfg.task:
        _require(cfg.task.per_batch >= 1, "task.per_batch", cfg.task.per_batch, "at least 1 channel per batch")
    if "lr" in cfg.optimizer:
        _require(cfg.optimizer.lr > 0, "optimizer.lr", cfg.optimizer.lr, "a positive learning rate")
    for term in ("diversity", "alignment"):
        if cfg[term].weight:
            _require(render.batch >= 2, "render.batch", render.batch,
                     f"at least 2 when {term}.weight is set: the {term} term compares the images of a batch")


def thresholds(cfg: DictConfig) -> list[int]:
    """The steps whose images are kept: as configured, or powers of two from 16 and the last step."""
    if cfg.render.thresholds is not None:
        return sorted(set(cfg.render.thresholds))
    steps = cfg.render.steps
    return sorted({2**k for k in range(4, steps.bit_length()) if 2**k <= steps} | {steps})


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise FvexpError(f"{key}={value} is not allowed: {key} must be {allowed}")
