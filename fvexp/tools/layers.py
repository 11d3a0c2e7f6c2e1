"""List a model's layers with their output shape and channel count, to pick `objective.layer`.

    fvexp-layers [model=torchvision model.name=resnet18 ...] [render.size=224]

Takes the same overrides as `fvexp`. The last column says which objectives can read each layer: a
layer must run exactly once per forward pass, and then (batch, channels, h, w) feature maps take
channel, neuron, layer and direction; (batch, features) vectors, such as the logits, class_logit,
class_prob, layer and direction; a vision transformer's (batch, tokens, features) layers, whose patch
tokens form a grid (`fvexp.optvis.tokens`), as feature maps (channel: a feature's mean over the patch
tokens, neuron: one patch); other (batch, tokens, channels) sequences only layer; `-` marks a layer
no objective can read.
"""

from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from fvexp.app.build import build
from fvexp.app.overrides import composition_error
from fvexp.app.places import config_dir
from fvexp.app.schema import check_size, register, search_folders
from fvexp.errors import FvexpError
from fvexp.optvis import objectives
from fvexp.optvis.features import FeatureModel
from fvexp.optvis.tokens import TokenGrid
from fvexp.tools.arguments import one_line_errors

SHOWN = ("channel", "neuron", "class_logit", "class_prob", "layer", "direction")  # the main objectives, in the table


def readers(shape: tuple[int, ...]) -> list[str]:
    """The main objectives (by their objective=... names) that can read a layer of this output shape."""
    return [name for name in SHOWN if objectives.kind(shape) in objectives.ACCEPTS[name]]


@torch.no_grad()
def table(model: FeatureModel, size: int) -> list[tuple[str, str, str, str, str]]:
    """(layer, module type, output shape, channels, objectives that can read it or `-`) for every named module."""
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
    grid = model.tokens
    for name, module in modules:
        shapes = outputs.get(name, [])
        shape = shapes[0] if len(shapes) == 1 else ()
        fits = readers(grid.shaped(torch.empty(shape)).shape if grid and len(shape) == 3 else shape) if shape else []
        channels = str(shape[-1] if len(shape) == 3 else shape[1]) if "channel" in fits or "class_logit" in fits else ""
        described = (_tokens(shape, grid) if "channel" in fits and len(shape) == 3 else "×".join(map(str, shape[1:]))
                     if shape else f"runs {len(shapes)} times" if len(shapes) != 1 else "no shape")
        readable = ", ".join(fits) or "-"
        if name in model.folded:  # its batch norm was folded into it: the values are read under the norm's name
            readable = f"- (its batch norm is folded in: read {model.folded[name]})"
        rows.append((name, type(module).__name__, described, channels, readable))
    return rows


def _tokens(shape: tuple[int, ...], grid: TokenGrid) -> str:
    """A token layer's shape with its grid: `257 tok×1536 (1+16×16)`."""
    side = grid.side(shape[1])
    return f"{shape[1]} tok×{shape[2]} ({grid.prefix}+{side}×{side})"


@one_line_errors("fvexp.layers")
def main(argv: list[str] | None = None) -> None:
    overrides = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(overrides):
        print(f"usage: fvexp-layers [-h] [KEY=VALUE ...]\n\n{__doc__.strip()}")
        return
    register(search_folders(overrides))
    options = [o for o in overrides if o.startswith("-")]
    if options:
        raise FvexpError(f"unknown option {options[0]}; fvexp-layers takes the overrides fvexp takes (KEY=VALUE), "
                         "see fvexp-layers --help")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise composition_error(error) from None
    check_size(cfg.render.size, "render.size")
    model = build(cfg.model)
    rows = table(model, cfg.render.size)
    width = max(len(r[0]) for r in rows)
    print(f"{type(model.net).__name__} at {cfg.render.size} px; logits layer: {model.logits_layer or '-'}"
          + (f"; fixed input {model.input_size} px: every image is resized to it" if model.input_size else "")
          + (f"; tokens: {model.tokens.prefix} leading, then {model.tokens.patch}-px patches" if model.tokens else ""))
    print(f"{'layer':<{width}}  {'module':<28}  {'output (c×h×w)':<16}  channels  objectives")
    for name, kind, shape, channels, fits in rows:
        print(f"{name:<{width}}  {kind[:28]:<28}  {shape:<16}  {channels:>8}  {fits}")


if __name__ == "__main__":
    main()
