"""Token layers: where a vision transformer's patch tokens sit, so that they read like feature maps.

A transformer block outputs (batch, tokens, features): a few leading tokens (the class token, then
any register tokens) and one token per image patch, row by row. Read as a (batch, features, h, w)
map of its patch tokens, such a layer takes every objective and tool written for convolutional
maps: a channel is a feature's mean over the patches (Ghiasi et al. 2022 leave the class token out),
a neuron is one patch, and a dataset example's position is its patch. `TokenGrid` is what a model
knows about its tokens; `find_grid` finds it from the network itself, so neither a torchvision ViT
nor a converted ONNX transformer needs the user to spell it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

RAW = "#tokens"  # a layer name ending in this is read as its raw (batch, tokens, features) sequence
Tokens = Literal["patches", "cls", "all"]


@dataclass(frozen=True)
class TokenGrid:
    """`prefix` leading tokens (class, registers), then a square grid of `patch`×`patch`-pixel patches."""

    prefix: int
    patch: int

    def side(self, tokens: int) -> int | None:
        """The side of the patch grid of a layer with `tokens` tokens; None if they do not form one."""
        patches = tokens - self.prefix
        side = math.isqrt(max(patches, 0))
        return side if patches > 0 and side * side == patches else None

    def shaped(self, output: Tensor) -> Tensor:
        """A (batch, tokens, features) output with a grid as the (batch, features, h, w) map of its patch
        tokens; any other output unchanged."""
        side = self.side(output.shape[1]) if output.dim() == 3 else None
        if side is None:
            return output
        return output[:, self.prefix :].transpose(1, 2).unflatten(2, (side, side))

    def why_not(self, tokens: int) -> str:
        """Why a layer of `tokens` tokens has no grid, in a few words."""
        return (f"its {tokens} tokens are not this model's {self.prefix} leading token(s) plus a square grid of "
                f"{self.patch}-px patches")


NO_PATCHES = "this model has no patch embedding (a convolution whose kernel equals its stride), so no token has a place"


def patch_size(net: nn.Module) -> int | None:
    """The side of a patch: the first square convolution whose kernel equals its stride (a ViT's patch embedding)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and module.kernel_size[0] > 1 \
                and module.kernel_size[0] == module.kernel_size[1]:
            return module.kernel_size[0]
    return None


@torch.no_grad()
def find_grid(model: Any, patches_per_side: int = 8) -> TokenGrid | None:
    """The token grid of `model` (a `FeatureModel`), or None for a network without patch tokens.

    One forward pass at its input size (or `patches_per_side` patches, small to be quick) records every
    (batch, tokens, features) output; the leading tokens are what most of them have beyond the grid of
    (side // patch)² patches.
    """
    patch = patch_size(model.net)
    if patch is None:
        return None
    side = model.input_size or patches_per_side * patch
    patches = (side // patch) ** 2
    lengths: Counter[int] = Counter()

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor) and output.dim() == 3 and 0 <= output.shape[1] - patches < patches:
            lengths[output.shape[1] - patches] += 1

    handles = [module.register_forward_hook(record) for module in model.net.modules()]
    try:
        model(torch.zeros(1, model.image_channels, side, side, device=model.device))
    except RuntimeError:  # a network that cannot take this size: it says so when a layer is probed
        return None
    finally:
        for handle in handles:
            handle.remove()
    return TokenGrid(lengths.most_common(1)[0][0], patch) if lengths else None



def token_value(act: Tensor, channel: int, tokens: Tokens) -> Tensor:
    """One feature of a raw token sequence: the class token's value, or its mean over all tokens."""
    return act[:, 0, channel] if tokens == "cls" else act[:, :, channel].mean(1)
