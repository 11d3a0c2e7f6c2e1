"""List a model's layers with their output shape and channel count, to pick `objective.layer`.

    python -m fvexp.tools.layers [model=torchvision model.name=resnet18 ...] [render.size=224]

Takes the same overrides as `fvexp`. A layer is usable when it runs exactly once per forward pass
and gives a (batch, channels, h, w) map or a (batch, features) vector.
"""

from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir
from torch import nn

from fvexp.app.build import build
from fvexp.app.places import config_dir
from fvexp.app.schema import register
from fvexp.errors import FvexpError
from fvexp.optvis.models import FeatureModel


@torch.no_grad()
def table(model: FeatureModel, size: int) -> list[tuple[str, str, str, str, bool]]:
    """(layer, module type, output shape, channels, usable) for every named module."""
    outputs: dict[str, list[tuple[int, ...]]] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: object, output: object) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            outputs.setdefault(name, []).append(shape)

        return record

    modules = [(name, module) for name, module in model.net.named_modules() if name]
    handles = [module.register_forward_hook(hook(name)) for name, module in modules]
    try:
        model(torch.zeros(1, model.image_channels, size, size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, module in modules:
        shapes = outputs.get(name, [])
        shape = shapes[0] if len(shapes) == 1 else ()
        usable = len(shapes) == 1 and len(shape) in (2, 4)
        described = "×".join(map(str, shape[1:])) if shape else f"runs {len(shapes)} times"
        rows.append((name, type(module).__name__, described, str(shape[1]) if usable else "", usable))
    return rows


def main(argv: list[str] | None = None) -> None:
    register()
    overrides = sys.argv[1:] if argv is None else argv
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        model = build(cfg.model)
        rows = table(model, cfg.render.size)
    except FvexpError as error:
        raise SystemExit(f"fvexp.layers: error: {error}") from None
    width = max(len(r[0]) for r in rows)
    print(f"{type(model.net).__name__} at {cfg.render.size} px; logits layer: {model.logits_layer or '-'}")
    print(f"{'layer':<{width}}  {'module':<28}  {'output (c×h×w)':<16}  channels  usable")
    for name, kind, shape, channels, usable in rows:
        print(f"{name:<{width}}  {kind[:28]:<28}  {shape:<16}  {channels:>8}  {'yes' if usable else 'no'}")


if __name__ == "__main__":
    main()
