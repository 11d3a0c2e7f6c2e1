"""Frozen classifiers that take plain RGB images in [0, 1], and read-outs of their inner layers.

Input normalization lives here, in the model, so that every parameterization and transform works
in plain RGB and the same image can be shown, saved and fed to any model.
Layers are named by their path in `net.named_modules()` (e.g. `_blocks.8`, `_fc`). The networks
themselves come from `fvexp.optvis.models` (the zoo) and their weights from `fvexp.optvis.weights`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvexp.errors import Arg, ArgumentError, FvexpError, Setting, unknown
from fvexp.optvis.tokens import RAW, TokenGrid, find_grid
from fvexp.ranges import Range, ranges

Activations = dict[str, Tensor]
LOGITS = "logits"  # not a layer name: whichever layer gives the model's logits (`FeatureModel.logits_layer`)
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
STD = Range(lambda std: all(value != 0 for value in std), "non-zero values: the network's input is divided by them")


@ranges(std=STD)
class FeatureModel(nn.Module):
    """A frozen network in eval mode that normalizes its [0, 1] RGB input itself.

    `min_size` is the smallest input in pixels that gives the network's last feature map a full
    position (its total stride); `classes` names the output classes, index by index, and
    `logits_layer` is the layer whose output is the logits (empty: the last `nn.Linear`), which
    objectives may call `logits`; `weights_path` the file the weights came from, whose checksum
    is recorded with every run; `folded` maps each convolution whose batch norm was folded into it
    (`fold_batch_norms`) to that batch norm, so that reading the convolution is refused. `input_size` is
    the side of the only images the network takes (a ViT's position embedding, an ONNX graph's static
    shape): every image is resized to it at the end of each step (bilinear, antialiased); None: any size.
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
        folded: Mapping[str, str] | None = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if not mean or len(std) != len(mean):
            raise ArgumentError(f"{{mean}} and {{std}} need one value per input channel: 3 (RGB), 1 (grayscale) or "
                                f"the channel count of your network's input, the same for both; got {len(mean)} and "
                                f"{len(std)}", kind="normalization", value=(len(mean), len(std)),
                                allowed="as many values in both", mean=Arg(FeatureModel, "mean"),
                                std=Arg(FeatureModel, "std"))
        self.net = net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = list(classes)
        linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
        self.logits_layer = logits_layer or (linears[-1] if linears else "")
        self.min_size, self.weights_path = min_size, weights_path
        self.folded = dict(folded or {})
        self.input_size = input_size
        self.autocast: torch.dtype | None = None  # bf16/fp16 mixed precision for the network; None: fp32
        self.eval()

    def forward(self, image: Tensor) -> Tensor:
        if self.mean.shape[1] == 1:  # a grayscale network sees the luminance of the RGB image
            image = (image * LUMA.to(image.device)).sum(1, keepdim=True)
        if self.input_size and image.shape[-2:] != (self.input_size, self.input_size):
            image = F.interpolate(image, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=bool(self.autocast)):
            return self.net((image - self.mean) / self.std)

    def train(self, mode: bool = True) -> FeatureModel:
        """Stay in eval mode: batch-norm statistics and dropout must not change while we optimize."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @cached_property
    def tokens(self) -> TokenGrid | None:
        """Where the patch tokens of the (batch, tokens, features) layers sit; None: the network has none.

        Such a layer is read as the (batch, features, h, w) map of its patch tokens (`TokenGrid.shaped`),
        and as its raw tokens under its name + `tokens.RAW`.
        """
        return find_grid(self)

    @property
    def image_channels(self) -> int:
        """Channels of the images to optimize: RGB for RGB and grayscale networks, else the network's own."""
        channels = self.mean.shape[1]
        return 3 if channels == 1 else channels

    def layer(self, name: str) -> nn.Module:
        name = name.removesuffix(RAW)
        modules = dict(self.net.named_modules())
        modules.pop("", None)
        if name == LOGITS and name not in modules:
            if not self.logits_layer:
                raise ArgumentError("this model has no logits layer (no nn.Linear); name it with {logits_layer}",
                                    kind="layer", value=LOGITS, logits_layer=Arg(FeatureModel, "logits_layer"))
            name = self.logits_layer
        if name not in modules:
            raise unknown("layer", name, modules, hint="Layers are paths in {net}.named_modules()", net=Setting.NET)
        if name in self.folded:
            raise ArgumentError("layer {name!r} has its batch norm {norm!r} folded into it for speed, so it outputs "
                                "what {norm!r} did; read {norm!r} for those values, or set {unfolded} to read the "
                                "convolution alone", kind="layer", value=name, closest=[self.folded[name]], name=name,
                                norm=self.folded[name], unfolded=Setting.UNFOLDED)
        return modules[name]

    @contextlib.contextmanager
    def reading(self, layers: Sequence[str]) -> Iterator[Callable[[Tensor], Activations]]:
        """Hook only `layers`; yield a function image -> {layer: activation}; remove the hooks after.

        The forward pass stops as soon as every requested layer has been seen, so an objective on
        an early layer pays only for the part of the network it needs.
        """
        wanted = set(layers)
        seen: Activations = {}
        grid = self.tokens if wanted else None  # found before any hook is set

        def hook(name: str) -> Callable[..., None]:
            shaped = grid.shaped if grid and not name.endswith(RAW) else lambda output: output

            def store(module: nn.Module, inputs: object, output: Tensor) -> None:
                seen[name] = shaped(output).float()  # objectives compute in fp32, also under mixed precision
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
        grid = self.tokens

        def hook(name: str) -> Callable[..., None]:
            def count(module: nn.Module, inputs: object, output: Tensor) -> None:
                calls[name] += 1
                shapes[name] = (grid.shaped(output) if grid and not name.endswith(RAW) else output).shape

            return count

        handles = [self.layer(name).register_forward_hook(hook(name)) for name in layers]
        try:
            self(torch.zeros(1, self.image_channels, size, size, device=self.device))
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ArgumentError(f"the network cannot take a {size}×{size} image ({{first}}); if it takes one size "
                                "only, set {input_size} to it and fvexp resizes every image to that size",
                                kind="size", value=size, first=first,
                                input_size=Arg(FeatureModel, "input_size")) from None
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
