"""Objectives: what to maximize, as functions of layer activations that compose with + - and *.

An objective returns one value per image of the batch. It names the layers it reads, so only those
are hooked, and carries preparations that run once against the model before any optimization: they
validate (a channel out of range fails at once, not after a minute of work) and precompute (a
reference image's activations). The key `input` holds the images before the transforms.

Each objective reads the kinds of layer output that `ACCEPTS` lists for it (channels and neurons
need (batch, channels, h, w) feature maps, class objectives (batch, classes) vectors, ...); its
first preparation rejects any other layer, naming an objective that can read that one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fvexp.errors import Arg, ArgumentError, Call, Setting, unknown
from fvexp.optvis.features import LOGITS, FeatureModel
from fvexp.optvis.images import load
from fvexp.optvis.tokens import NO_PATCHES, RAW, Tokens, token_value
from fvexp.optvis.weights import class_names
from fvexp.ranges import SIDE, above, ranges

Shapes = Mapping[str, torch.Size]
Prepare = Callable[["FeatureModel", Shapes], None]
INPUT = "input"  # not a layer: the batch of images itself, before the transforms


@dataclass(frozen=True)
class Unit:
    """The one unit an objective is about, as dataset examples rank natural images by it.

    A channel ranks an image by its strongest position (`position` None); a neuron by its own
    position (y, x), None in it meaning the centre of the map. `softmax` ranks by the layer's
    softmax (a class probability) instead of the raw value.
    """

    layer: str
    channel: int
    position: tuple[int | None, int | None] | None = None
    softmax: bool = False


class Objective:
    """A per-image score to maximize; `a + b`, `a - b`, `2 * a` build new objectives.

    `unit` is set by the objectives about one unit (neuron, channel, class); sums and products
    of objectives have none.
    """

    def __init__(
        self,
        fn: Callable[[Mapping[str, Tensor]], Tensor],
        layers: frozenset[str],
        name: str,
        preparations: tuple[Prepare, ...] = (),
        unit: Unit | None = None,
    ) -> None:
        self.fn, self.layers, self.name, self.preparations, self.unit = fn, layers, name, preparations, unit

    def __call__(self, activations: Mapping[str, Tensor]) -> Tensor:
        return self.fn(activations)

    @property
    def network_layers(self) -> list[str]:
        """The layers of the network to hook, sorted: `layers` without the input images."""
        return sorted(self.layers - {INPUT})

    def prepare(self, model: FeatureModel, shapes: Shapes) -> None:
        """Validate against the model's layer `shapes` (at the smallest image it will see) and precompute."""
        for prepare in self.preparations:
            prepare(model, shapes)

    def __add__(self, other: Objective | float) -> Objective:
        other = _constant(other) if isinstance(other, Real) else other
        return Objective(
            lambda acts: self(acts) + other(acts),
            self.layers | other.layers,
            f"{self.name} + {other.name}",
            self.preparations + other.preparations,
        )

    __radd__ = __add__  # lets sum([...]) start from 0

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, Real):
            raise TypeError(f"an objective multiplies by a number, not by {type(weight).__name__}")
        return Objective(lambda acts: weight * self(acts), self.layers, f"{weight:g}·{self.name}", self.preparations)

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return -1 * self

    def __sub__(self, other: Objective | float) -> Objective:
        other = _constant(other) if isinstance(other, Real) else other
        return Objective(
            lambda acts: self(acts) - other(acts),
            self.layers | other.layers,
            f"{self.name} - {other.name}",
            self.preparations + other.preparations,
        )

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _constant(value: float) -> Objective:
    return Objective(lambda acts: torch.as_tensor(float(value)), frozenset(), f"{value:g}")


# The kinds of layer output an objective can read, by the shape of the output.
MAPS, VECTORS, SEQUENCES = "maps", "vectors", "sequences"  # (B, C, H, W), (B, C), (B, N, C)
KIND_OF_RANK = {4: MAPS, 2: VECTORS, 3: SEQUENCES}
KIND_NAMES = {MAPS: "(batch, channels, h, w) feature maps", VECTORS: "(batch, features) vectors",
              SEQUENCES: "(batch, tokens, channels) sequences"}
# Which kinds of output each objective (by its function's name) and batch term reads.
ACCEPTS: dict[str, tuple[str, ...]] = {
    "channel": (MAPS,), "neuron": (MAPS,), "class_logit": (VECTORS,), "class_prob": (VECTORS,),
    "class_logsumexp": (VECTORS,), "layer": (MAPS, VECTORS, SEQUENCES), "direction": (MAPS, VECTORS),
    "direction_neuron": (MAPS,), "random_direction": (MAPS, VECTORS), "style": (MAPS,),
    "inversion": (MAPS, VECTORS, SEQUENCES), "diversity": (MAPS,), "alignment": (MAPS, VECTORS, SEQUENCES),
}


def kind(shape: Sequence[int]) -> str | None:
    """`maps`, `vectors` or `sequences` for a layer's output shape; None for any other rank."""
    return KIND_OF_RANK.get(len(shape))


def _describe(shape: Sequence[int]) -> str:
    dims = ", ".join(["batch", *map(str, shape[1:])])
    return f"({dims}) " + {MAPS: "feature maps", VECTORS: "vectors", SEQUENCES: "sequences"}.get(kind(shape), "outputs")


def _check_kind(layer: str, objective: str, unit: int | None = None, argument: str = "") -> Prepare:
    """A preparation that rejects a layer whose output `objective` cannot read, naming what can read it.

    `unit` is the channel or class index the objective reads, repeated in the advice; `argument` the
    objective's argument that named the layer when it is not its main `layer` (a batch term's, style's list).
    """
    accepts = ACCEPTS[objective]

    def check(model: FeatureModel, shapes: Shapes) -> None:
        shape = shapes.get(layer)
        got = kind(shape) if shape is not None else accepts[0]  # not probed: nothing to check
        if got in accepts:
            return
        piece = globals()[objective]  # by name: inside `channel` and `layer` their arguments hide the functions
        name = model.logits_layer if layer == LOGITS and model.logits_layer else layer
        index = unit if unit is not None and len(shape) > 1 and 0 <= unit < shape[1] else "N"
        logits = model.logits_layer if model.logits_layer not in ("", name) else ""
        parts: dict[str, Any] = {"key": Arg(piece, argument) if argument else "layer", "reader": Arg(piece)}
        reader = "the {reader} term" if objective in ("diversity", "alignment") else "{reader}"
        if argument:
            advice = f"set {{key}} to {'layers' if argument.endswith('s') else 'a layer'} with feature maps"
        elif got == VECTORS:
            advice, parts["call"] = "use {call}", Call(class_logit, (("layer", name), ("label", index)))
        elif got == MAPS:
            advice, parts["call"] = "use {call}", Call(channel, (("layer", name), ("channel", index)))
            advice, parts["logits"] = advice + (", or a layer with vectors such as {logits}" if logits else ""), logits
        elif got == SEQUENCES:
            why = model.tokens.why_not(shape[1]) if model.tokens else NO_PATCHES
            advice, parts["why"] = "its tokens have no image grid ({why}); use {call}", why
            parts["call"] = Call(globals()["layer"], (("layer", name),))  # the objective `layer`, not the argument
        else:
            advice = "choose another layer"
        wanted = "(batch, classes) vectors" if accepts == (VECTORS,) else " or ".join(KIND_NAMES[k] for k in accepts)
        raise ArgumentError(f"{{key}} {{name!r}} gives {{shape}}, not the {wanted} {reader} reads; {advice} "
                            "(fvexp-layers lists which objectives fit each layer)", kind="layer", value=name,
                            allowed=wanted, name=name, shape=_describe(shape), **parts)

    return check


def _check_channel(layer: str, channel: int, piece: str, argument: str = "channel") -> Prepare:
    """A preparation that rejects a channel (or class) index the layer does not have; `piece` the objective."""

    def check(model: FeatureModel, shapes: Shapes) -> None:
        count = shapes[layer][1]
        if not 0 <= channel < count:
            raise ArgumentError(f"channel {channel} is out of range for layer {{layer!r}}, which has {count} channels "
                                f"({{argument}} must be 0..{count - 1})", kind="channel", value=channel, layer=layer,
                                allowed=f"0..{count - 1}", argument=Arg(globals()[piece], argument))

    return check


def _check_tokens(layer: str, channel: int, tokens: Tokens) -> Prepare:
    """A preparation for `channel(tokens=cls|all)`: the layer is a token layer with a grid, the channel in range."""

    def check(model: FeatureModel, shapes: Shapes) -> None:
        piece, whole = globals()["channel"], globals()["layer"]  # the objectives, not `_check_tokens`' arguments
        shape = shapes[layer + RAW]
        grid = model.tokens
        said = {"layer": layer, "tokens": Arg(piece, "tokens", tokens), "patches": Arg(piece, "tokens", "patches")}
        if len(shape) != 3:
            raise ArgumentError("{tokens} reads a (batch, tokens, features) layer, and {layer!r} gives ({dims}); use "
                                "{patches}", kind="tokens", value=tokens, allowed="patches",
                                dims=", ".join(["batch", *map(str, shape[1:])]), **said)
        if grid is None or grid.side(shape[1]) is None:
            raise ArgumentError("layer {layer!r} has no patch grid: {why}; use {whole} on it", kind="layer",
                                value=layer, why=grid.why_not(shape[1]) if grid else NO_PATCHES,
                                whole=Arg(whole), **said)
        if tokens == "cls" and grid.prefix == 0:
            raise ArgumentError("layer {layer!r} has no class token (its tokens are all patches); use {patches} or "
                                "all", kind="tokens", value=tokens, allowed="patches or all", **said)
        if not 0 <= channel < shape[2]:
            raise ArgumentError(f"channel {channel} is out of range for layer {{layer!r}}, which has {shape[2]} "
                                f"features ({{channel}} must be 0..{shape[2] - 1})", kind="channel", value=channel,
                                allowed=f"0..{shape[2] - 1}", channel=Arg(piece, "channel"), **said)

    return check


def neuron(layer: str, channel: int, x: int | None = None, y: int | None = None) -> Objective:
    """One unit at one spatial position (the centre unless `x`, `y` are given)."""

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        return at_position(acts[layer], x, y)[:, channel]

    name = f"neuron {layer}:{channel}@{_where(x, y)}"
    return Objective(value, frozenset({layer}), name,
                     (_check_kind(layer, "neuron", channel), _check_channel(layer, channel, "neuron"),
                      _check_position(layer, x, y, neuron)),
                     Unit(layer, channel, (y, x)))


def at_position(act: Tensor, x: int | None, y: int | None) -> Tensor:
    """(B, C): the map's vectors at one position, the centre unless `x`, `y` are given."""
    h, w = act.shape[-2:]
    return act[:, :, h // 2 if y is None else y, w // 2 if x is None else x]


def _where(x: int | None, y: int | None) -> str:
    return "centre" if x is None and y is None else f"x={x},y={y}"


def _check_position(layer: str, x: int | None, y: int | None, piece: Callable[..., Any]) -> Prepare:
    """A preparation that rejects a position outside the layer's map at the smallest image the run sees."""

    def check(model: FeatureModel, shapes: Shapes) -> None:
        h, w = shapes[layer][-2:]
        if (x is not None and not 0 <= x < w) or (y is not None and not 0 <= y < h):
            raise ArgumentError(
                f"position x={x}, y={y} is outside layer {{layer}}, whose map is {h}x{w} at this image "
                f"size; use {{x}} in 0..{w - 1} and {{y}} in 0..{h - 1}, or a larger {{size}}", kind="position",
                value=(x, y), allowed=f"x in 0..{w - 1}, y in 0..{h - 1}", layer=repr(layer),
                x=Arg(piece, "x"), y=Arg(piece, "y"), size=Setting.IMAGE_SIZE)

    return check


def channel(layer: str, channel: int, tokens: Literal["patches", "cls", "all"] = "patches") -> Objective:
    """Mean activation of one channel over all positions: the article's default objective.

    On a transformer's token layer the positions are its patch tokens; `tokens=cls` reads the class
    token instead, `all` the mean over every token (`fvexp.optvis.tokens`).
    """
    if tokens != "patches":
        raw = layer + RAW
        return Objective(lambda acts: token_value(acts[raw], channel, tokens), frozenset({raw}),
                         f"channel {layer}:{channel} ({tokens} tokens)", (_check_tokens(layer, channel, tokens),),
                         Unit(layer, channel))
    return Objective(
        lambda acts: acts[layer][:, channel].flatten(1).mean(1),
        frozenset({layer}),
        f"channel {layer}:{channel}",
        (_check_kind(layer, "channel", channel), _check_channel(layer, channel, "channel")),
        Unit(layer, channel),
    )


def layer(layer: str) -> Objective:
    """DeepDream: mean of squared activations of a whole layer, amplifying whatever is there."""
    return Objective(lambda acts: acts[layer].pow(2).flatten(1).mean(1), frozenset({layer}), f"layer {layer}",
                     (_check_kind(layer, "layer"),))


def class_logit(label: int | str, layer: str = LOGITS, classes: str | Sequence[str] = "imagenet") -> Objective:
    """A class's pre-softmax logit, which the article finds gives better images than probability."""
    index = class_index(label, classes)
    return Objective(lambda acts: acts[layer][:, index], frozenset({layer}), f"logit {label}",
                     (_check_kind(layer, "class_logit", index), _check_channel(layer, index, "class_logit", "label")),
                     Unit(layer, index))


def class_prob(label: int | str, layer: str = LOGITS, classes: str | Sequence[str] = "imagenet") -> Objective:
    """A class's softmax probability: rises most easily by making other classes unlikely."""
    index = class_index(label, classes)
    return Objective(
        lambda acts: acts[layer].softmax(1)[:, index],
        frozenset({layer}),
        f"prob {label}",
        (_check_kind(layer, "class_prob", index), _check_channel(layer, index, "class_prob", "label")),
        Unit(layer, index, softmax=True),
    )


def class_index(label: int | str, classes: str | Sequence[str]) -> int:
    """A class index from an index or a class name (e.g. `goldfish`), with suggestions on a typo.

    `classes` is a source of names (`imagenet`, a text file; empty: none) or the names themselves.
    """
    names = (class_names(classes) if classes else ()) if isinstance(classes, str) else tuple(classes)
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
        index = int(label)
        if names and not 0 <= index < len(names):
            source = classes if isinstance(classes, str) else "the model"
            raise ArgumentError("class index {index} is out of range: {source} has classes 0..{last}", kind="label",
                                value=index, allowed=f"0..{len(names) - 1}", index=index, source=source,
                                last=len(names) - 1)
        return index
    if not names:
        raise ArgumentError(f"class label {label!r} needs the model's class names ({{classes}}); or give the class "
                            "index", kind="label", value=label, classes=Setting.CLASS_SOURCES)
    lowered = [name.lower() for name in names]
    if label.lower() in lowered:
        return lowered.index(label.lower())
    raise unknown("class label", label, names, hint="{label} takes a class name or an index",
                  label=Arg(class_logit, "label"))


def class_logsumexp(label: int | str, layer: str = LOGITS, classes: str | Sequence[str] = "imagenet") -> Objective:
    """A class's log-probability, logit − LogSumExp(logits): softmax's ranking without its flat gradients."""
    index = class_index(label, classes)
    return Objective(
        lambda acts: acts[layer][:, index] - acts[layer].logsumexp(1),
        frozenset({layer}),
        f"logsumexp {label}",
        (_check_kind(layer, "class_logsumexp", index), _check_channel(layer, index, "class_logsumexp", "label")),
        Unit(layer, index, softmax=True),  # the log of the probability ranks images alike
    )


def _dot_cossim(acts: Tensor, vector: Tensor, cossim_pow: float) -> Tensor:
    """Per image: mean over positions of dot(act, v) · max(0.1, cos(act, v))^p (Lucid's `_dot_cossim`)."""
    shape = (1, -1) + (1,) * (acts.dim() - 2)
    dot = (acts * vector.view(shape)).sum(1)
    if cossim_pow:
        cos = dot / (1e-4 + acts.norm(dim=1)) / (1e-4 + vector.norm())
        dot = dot * cos.clamp(min=0.1) ** cossim_pow
    return dot.flatten(1).mean(1)


def direction(layer: str, vector: list[float], cossim_pow: float = 0.0) -> Objective:
    """A direction in a layer's activation space: a mix of channels, favouring alignment by cos^p."""
    weights = [torch.tensor(vector, dtype=torch.float32)]
    return Objective(lambda acts: _dot_cossim(acts[layer], weights[0].to(acts[layer].device), cossim_pow),
                     frozenset({layer}), f"direction {layer}",
                     (_check_kind(layer, "direction"), _check_vector(layer, weights, direction)))


def direction_neuron(layer: str, vector: list[float], cossim_pow: float = 0.0, x: int | None = None,
                     y: int | None = None) -> Objective:
    """A direction at one position of a feature map (the centre unless `x`, `y` are given), dot · cos^p there.

    Lucid's `direction_neuron_cossim_S`, with which its activation atlas rendered its icons. Why one
    position: a direction asked of every position must be tiled over the whole image, and the weak
    directions of flat regions (sky, plain walls, dark backgrounds) then tile into the layer's average
    high-frequency texture; asked of the centre, the image around it is free to hold the structure
    that leads there.
    """
    weights = [torch.tensor(vector, dtype=torch.float32)]

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        return _dot_cossim(at_position(acts[layer], x, y)[..., None], weights[0].to(acts[layer].device), cossim_pow)

    return Objective(value, frozenset({layer}), f"direction {layer}@{_where(x, y)}",
                     (_check_kind(layer, "direction_neuron"), _check_vector(layer, weights, direction_neuron),
                      _check_position(layer, x, y, direction_neuron)))


def _check_vector(layer: str, weights: list[Tensor], piece: Callable[..., Any]) -> Prepare:
    """A preparation that rejects a vector without one weight per channel, then moves it to the model's device."""

    def check(model: FeatureModel, shapes: Shapes) -> None:
        if len(weights[0]) != shapes[layer][1]:
            raise ArgumentError(f"{{vector}} has {len(weights[0])} values but layer {{layer!r}} has "
                                f"{shapes[layer][1]} channels; give one weight per channel", kind="vector", layer=layer,
                                value=len(weights[0]), allowed=f"{shapes[layer][1]} values",
                                vector=Arg(piece, "vector"))
        weights[0] = weights[0].to(model.device)  # once: a copy per step would stall a GPU's queue

    return check


def random_direction(layer: str, seed: int = 0, cossim_pow: float = 0.0) -> Objective:
    """A seeded random unit direction in a layer's activation space."""
    vector: list[Tensor] = []

    def draw(model: FeatureModel, shapes: Shapes) -> None:
        v = torch.randn(shapes[layer][1], generator=torch.Generator().manual_seed(seed))
        vector[:] = [(v / v.norm()).to(model.device)]

    return Objective(lambda acts: _dot_cossim(acts[layer], vector[0].to(acts[layer].device), cossim_pow),
                     frozenset({layer}), f"random direction {layer} #{seed}",
                     (_check_kind(layer, "random_direction"), draw))


def combine(terms: list[Mapping[str, Any]]) -> Objective:
    """Neuron arithmetic: the sum of `weight · objective` over `terms` (e.g. two channels added)."""
    named = Arg(combine, "terms")
    if not terms:
        raise ArgumentError("{terms} is empty; give a list of {term}", kind="terms", value=terms, terms=named,
                            term=Setting.TERM)
    for i, term in enumerate(terms):
        if not isinstance(term, Mapping) or term.get("objective") is None:
            raise ArgumentError(f"{{terms}}[{i}] has no objective; each term is {{term}}", kind="terms", value=term,
                                terms=named, term=Setting.TERM_WITH_EXAMPLE)
        if not isinstance(term["objective"], Objective):
            raise ArgumentError(f"{{terms}}[{i}].objective={{given!r}} is not an objective; give {{one}}",
                                kind="objective", value=term["objective"], terms=named, given=term["objective"],
                                one=Setting.AN_OBJECTIVE)
    return sum(_weight(term.get("weight", 1.0)) * term["objective"] for term in terms)


def interpolate(a: Objective, b: Objective) -> Objective:
    """Image i of the batch maximizes (1 − tᵢ)·a + tᵢ·b, tᵢ going from 0 to 1 across the batch."""
    for key, end in (("a", a), ("b", b)):
        if not isinstance(end, Objective):
            raise ArgumentError("{given} is not an objective; {piece} needs two, {a} and {b}, e.g. {key}={example}",
                                kind="objective", value=end, given=Arg(interpolate, key, end, quoted=True),
                                piece=Arg(interpolate), a=Arg(interpolate, "a"), b=Arg(interpolate, "b"),
                                key=Arg(interpolate, key), example=Setting.EXAMPLE)

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        va, vb = a(acts), b(acts)
        t = torch.linspace(0, 1, len(va), device=va.device)
        return (1 - t) * va + t * vb

    return Objective(value, a.layers | b.layers, f"interpolate({a.name} → {b.name})", a.preparations + b.preparations)


def per_image(objectives: list[Objective]) -> Objective:
    """Image i of the batch maximizes `objectives[i]`: one optimization for many units, as a gallery runs."""

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([o({k: a[i : i + 1] for k, a in acts.items()}) for i, o in enumerate(objectives)])

    layers = frozenset().union(*(o.layers for o in objectives))
    preparations = tuple(p for o in objectives for p in o.preparations)
    return Objective(value, layers, f"per image ({len(objectives)})", preparations)


def _grams(acts: Tensor) -> Tensor:
    """Per image, the channel Gram matrix flattened and scaled to unit length."""
    flat = acts.flatten(2)
    return F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)


def gram_cosines(acts: Tensor) -> Tensor:
    """(B, B) cosine similarities between the Gram matrices of the images of a batch."""
    grams = _grams(acts)
    return grams @ grams.T


def diversity(layer: str) -> Objective:
    """Lucid's diversity term: minus the summed Gram cosines to the other images of the batch.

    Added to an objective with a weight, it pushes the images of a batch to excite the unit in
    different ways, showing several facets of what it responds to.
    """

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        cosines = gram_cosines(acts[layer])
        return -(cosines.sum(1) - cosines.diagonal())

    return Objective(value, frozenset({layer}), f"diversity {layer}",
                     (_check_kind(layer, "diversity", argument="layer"),))


@ranges(decay_ratio=above(0, "a positive ratio by which the penalty falls per image of distance"))
def alignment(layer: str, decay_ratio: float = 2.0) -> Objective:
    """Keep neighbouring images of a batch similar at `layer` (Lucid's alignment), for interpolations."""

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        act = acts[layer]
        penalty = torch.zeros(len(act), device=act.device)
        for distance in range(1, min(5, len(act))):
            gaps = (act[:-distance] - act[distance:]).pow(2).flatten(1).mean(1) / decay_ratio**distance
            penalty = penalty + F.pad(gaps, (0, distance))
        return -penalty

    return Objective(value, frozenset({layer}), f"alignment {layer}",
                     (_check_kind(layer, "alignment", argument="layer"),))


@ranges(size=SIDE)
def style(layers: list[str], image: str, size: int = 224) -> Objective:
    """Match the Gram matrices of a reference image at `layers` (the objective of style transfer)."""
    reference: dict[str, Tensor] = {}

    def gram(act: Tensor) -> Tensor:
        flat = act.flatten(2)
        return flat @ flat.transpose(1, 2) / flat.shape[-1]

    def prepare(model: FeatureModel, shapes: Shapes) -> None:
        with torch.no_grad(), model.reading(layers) as read:
            acts = read(load(image, size, key=Arg(style, "image")).to(model.device))
        reference.update({layer: gram(acts[layer]) for layer in layers})

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        losses = [(gram(acts[layer]) - reference[layer]).pow(2).flatten(1).mean(1) / reference[layer].pow(2).mean()
                  for layer in layers]
        return -sum(losses)

    checks = tuple(_check_kind(layer, "style", argument="layers") for layer in layers)
    return Objective(value, frozenset(layers), f"style {Path(image).name}", (*checks, prepare))


@ranges(size=SIDE)
def inversion(layer: str, image: str, size: int = 224) -> Objective:
    """Match a reference image's activations at `layer`: what the layer keeps of that image."""
    reference: list[Tensor] = []

    def prepare(model: FeatureModel, shapes: Shapes) -> None:
        with torch.no_grad(), model.reading([layer]) as read:
            reference[:] = [read(load(image, size, key=Arg(inversion, "image")).to(model.device))[layer]]

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        act, target = acts[layer], reference[0]
        if act.dim() == 4 and act.shape[-2:] != target.shape[-2:]:  # transforms changed the image size
            target = F.interpolate(target, size=act.shape[-2:], mode="bilinear", align_corners=False)
        return -(act - target).pow(2).flatten(1).mean(1) / target.pow(2).mean()

    return Objective(value, frozenset({layer}), f"inversion {layer} {Path(image).name}",
                     (_check_kind(layer, "inversion"), prepare))


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentError("{weight} must be a number, got {given!r}", kind="weight", value=value, given=value,
                            allowed="a number", weight=Arg(combine, "terms[].weight"))
    return float(value)
