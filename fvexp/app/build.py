"""From config to pieces: the one place where config nodes become the library's objects.

Every task builds its objective, parameterization, transforms and optimizer here, so a new piece
needs only its config; and every check that needs the model (an image too small for a layer, a
device that does not exist) runs here before any optimization starts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fvexp.app.environment import sha256
from fvexp.app.keys import said
from fvexp.app.places import launch_dir
from fvexp.app.schema import require
from fvexp.errors import FvexpError
from fvexp.optvis.examples import Activations, activations
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.objectives import Objective, Unit
from fvexp.optvis.render import images_that_fit, render
from fvexp.optvis.transforms import Compose

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_SIZE = 256  # a multiple of every stride, to read each layer's stride from its map size
CPU_PER_BATCH = 16  # images per optimization where `task.per_batch` is null and there is no CUDA card to fill


def build(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but an fvexp error inside a constructor reaches the user unwrapped, and in the
    config's keys where `node` is part of the run's config (a detached copy's error is worded by `job.execute`)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, FvexpError):
            root = node._get_root()
            raise (error.__cause__ if root is node else said(error.__cause__, root)) from None
        raise FvexpError(str(error).replace("\n", " ")) from None


def build_model(cfg: DictConfig, device: torch.device) -> FeatureModel:
    """The configured network on `device`, with the configured precision and memory layout."""
    return configure(build(cfg.model), cfg, device)


def configure(model: FeatureModel, cfg: DictConfig, device: torch.device) -> FeatureModel:
    model = model.to(device)
    model.autocast = PRECISIONS[cfg.precision]
    return lay_out(model, cfg.channels_last, device)


def lay_out(model: FeatureModel, channels_last: bool | None, device: torch.device) -> FeatureModel:
    """The model in the memory layout the `channels_last` setting asks for; None (the default): NHWC on the CPU."""
    nhwc = device.type == "cpu" if channels_last is None else channels_last
    return model.to(memory_format=torch.channels_last) if nhwc else model


def build_objective(cfg: DictConfig, main: Objective, computed: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> Objective:
    """The main objective plus every weighted regularizer, diversity and alignment term; `computed` holds
    arguments that terms take from the run, by the term's key (`fvexp.app.priors.data_terms`)."""
    return main + sum(weight * build(term, **(computed or {}).get(key, {}))
                      for key, weight, term in extra_terms(cfg, main))


def build_param(cfg: DictConfig, model: FeatureModel, batch: int) -> torch.nn.Module:
    """The parameterization of `batch` images at `render.size` for the model's input channels, on its device.

    `param.init` and `param.image` are fvexp's, not the class's.
    """
    settings = OmegaConf.to_container(cfg.param, resolve=True)  # param=prior's path may name the penalty's
    node = OmegaConf.create({k: v for k, v in settings.items() if k not in ("init", "image")})
    return build(node)(batch=batch, size=cfg.render.size, channels=model.image_channels).to(model.device)


def extra_terms(cfg: DictConfig, main: Objective) -> Iterator[tuple[str, float, DictConfig]]:
    """(key, signed weight, config) of every regularizer, diversity and alignment term whose weight is not 0.

    Regularizers are penalties, subtracted; diversity and alignment are rewards, added, and default
    to the main objective's layer.
    """
    for key, term in cfg.regularizers.items():
        if term.weight:
            yield str(key), -term.weight, OmegaConf.masked_copy(term, [k for k in term if k != "weight"])
    for name in ("diversity", "alignment"):
        term = cfg[name]
        if term.weight:
            layer = term.layer or sole_layer(main, f"{name}.layer")
            settings = OmegaConf.masked_copy(term, [k for k in term if k not in ("weight", "layer")])
            yield name, term.weight, OmegaConf.merge(settings, {"layer": layer})


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


def batch_size(cfg: DictConfig, model: FeatureModel, transforms: Compose, main: Callable[[int], Objective],
               count: int, per_batch: int | None) -> int:
    """`per_batch` (a task's `task.per_batch`), or where it is None: on a CUDA card as many images as fit in its
    memory, in batches of equal size for `count` images; elsewhere `CPU_PER_BATCH`.

    `main(batch)` is the per-image objective of a batch, for the one-step probes that measure memory.
    """
    if per_batch is not None:
        require(per_batch >= 1, "task.per_batch", per_batch, "at least 1 image per optimization")
        return per_batch

    def step(batch: int) -> None:
        objective = build_objective(cfg, main(batch))
        check_fits(model, objective, transforms, cfg.render.size)
        render(model, objective, build_param(cfg, model, batch), transforms, build(cfg.optimizer), 1, cfg.seed,
               progress=False)

    fit = images_that_fit(step, model.device)
    if fit is None:
        return CPU_PER_BATCH
    return math.ceil(count / math.ceil(count / fit))  # count >= 1: a gallery has channels, an atlas a grid


def check_fits(model: FeatureModel, objective: Objective, transforms: Compose, size: int) -> None:
    """Reject an image too small for the objective's layers, then let the objective check itself.

    A layer of stride s needs at least s pixels of image for one full position, both in the image
    itself and in what the model sees after the transforms (which may crop it).
    """
    layers = objective.network_layers
    at_probe = model.probe(layers, PROBE_SIZE)
    needs = {layer: PROBE_SIZE // shape[-1] if len(shape) == 4 and shape[-1] > 1 else model.min_size
             for layer, shape in at_probe.items()}  # one position at the probe's size: a global pooling
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


def model_key(cfg: DictConfig, model: FeatureModel) -> str:
    """What identifies the network whatever built it (a config or a Python caller): its class, the input's
    normalization and size, its weights' checksum and the precision it runs at."""
    return json.dumps([type(model.net).__qualname__, model.mean.flatten().tolist(), model.std.flatten().tolist(),
                       model.logits_layer, model.input_size, weights_digest(model), cfg.precision])


def weights_digest(model: FeatureModel) -> str:
    """The sha256 of the weights file, or of the weights themselves for a network built in memory."""
    if model.weights_path:
        return sha256(model.weights_path)
    digest = hashlib.sha256()
    for name, tensor in model.net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_dir(cfg: DictConfig) -> Path:
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else launch_dir() / "outputs" / "cache"


def dataset_activations(cfg: DictConfig, model: FeatureModel, unit: Unit) -> Activations:
    """The unit's layer over `data.dir` as `data.*` configures its reading, through the run's activation cache."""
    data = cfg.data
    return activations(model, unit, data.dir, size=data.size, batch_size=data.batch_size, workers=data.workers,
                       model_key=model_key(cfg, model), cache_dir=cache_dir(cfg), progress=cfg.progress)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config as (dotted.key, value) pairs, the form MLflow params take."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
