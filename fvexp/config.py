"""Typed schemas for every config group, so a typo or a wrong type fails when the config is composed.

Each option's YAML under `conf/` extends one of these schemas through its defaults list; the schema
fixes the keys and their types, the YAML only sets values. Ranges that OmegaConf cannot express
(a positive step count, say) are checked by `validate` before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

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
class PixelConfig:
    _target_: str = "fvexp.params.Pixel"
    _partial_: bool = True  # batch and size come from `render`
    sd: float = 0.01
    decorrelate: bool = False


@dataclass
class FourierConfig:
    _target_: str = "fvexp.params.Fourier"
    _partial_: bool = True
    sd: float = 0.01
    decay_power: float = 1.0
    decorrelate: bool = True


@dataclass
class TransformsConfig:
    _target_: str = "fvexp.transforms.Compose"
    pieces: list[Any] = field(default_factory=list)


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
    progress: bool = True
    render: RenderConfig = field(default_factory=RenderConfig)
    model: Any = None
    objective: Any = None
    param: Any = None
    transforms: Any = None
    optimizer: Any = None
    tracking: Any = None


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"efficientnet_lite": EfficientNetLiteConfig},
    "objective": {
        "neuron": NeuronConfig,
        "channel": ChannelConfig,
        "layer": LayerConfig,
        "class_logit": ClassLogitConfig,
        "class_prob": ClassProbConfig,
    },
    "param": {"pixel": PixelConfig, "fourier": FourierConfig},
    "transforms": {"compose": TransformsConfig},
    "optimizer": {"adam": AdamConfig, "sgd": SGDConfig},
    "tracking": {"mlflow": MlflowConfig, "none": NoTrackingConfig},
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
    """Check the ranges the schema's types cannot express, naming the key that is wrong."""
    render = cfg.render
    _require(render.steps >= 1, "render.steps", render.steps, "a positive number of optimization steps")
    _require(render.size >= 1, "render.size", render.size, "the image side in pixels, at least 1")
    _require(render.batch >= 1, "render.batch", render.batch, "the number of images, at least 1")
    for step in render.thresholds or ():
        _require(1 <= step <= render.steps, "render.thresholds", list(render.thresholds),
                 f"steps between 1 and render.steps={render.steps}")
    if "lr" in cfg.optimizer:
        _require(cfg.optimizer.lr > 0, "optimizer.lr", cfg.optimizer.lr, "a positive learning rate")


def thresholds(cfg: DictConfig) -> list[int]:
    """The steps whose images are kept: as configured, or powers of two from 16 and the last step."""
    if cfg.render.thresholds is not None:
        return sorted(set(cfg.render.thresholds))
    steps = cfg.render.steps
    return sorted({2**k for k in range(4, steps.bit_length()) if 2**k <= steps} | {steps})


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise FvexpError(f"{key}={value} is not allowed: {key} must be {allowed}")
