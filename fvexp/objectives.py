"""Objectives: what to maximize, as functions of layer activations that compose with + - and *.

An objective returns one value per image of the batch. It names the layers it reads, so only those
are hooked, and carries checks that validate it against the model's layer shapes before any
optimization runs (a channel out of range fails at once, not after a minute of work).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Real

import torch
from torch import Tensor

from fvexp.errors import FvexpError, unknown
from fvexp.models import class_names

Shapes = Mapping[str, torch.Size]
Check = Callable[[Shapes], None]


class Objective:
    """A per-image score to maximize; `a + b`, `a - b`, `2 * a` build new objectives."""

    def __init__(
        self,
        fn: Callable[[Mapping[str, Tensor]], Tensor],
        layers: frozenset[str],
        name: str,
        checks: tuple[Check, ...] = (),
    ) -> None:
        self.fn, self.layers, self.name, self.checks = fn, layers, name, checks

    def __call__(self, activations: Mapping[str, Tensor]) -> Tensor:
        return self.fn(activations)

    def check(self, shapes: Shapes) -> None:
        for check in self.checks:
            check(shapes)

    def __add__(self, other: Objective | float) -> Objective:
        other = _constant(other) if isinstance(other, Real) else other
        return Objective(
            lambda acts: self(acts) + other(acts),
            self.layers | other.layers,
            f"{self.name} + {other.name}",
            self.checks + other.checks,
        )

    __radd__ = __add__  # lets sum([...]) start from 0

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, Real):
            raise TypeError(f"an objective multiplies by a number, not by {type(weight).__name__}")
        return Objective(lambda acts: weight * self(acts), self.layers, f"{weight:g}·{self.name}", self.checks)

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return -1 * self

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _constant(value: float) -> Objective:
    return Objective(lambda acts: torch.as_tensor(float(value)), frozenset(), f"{value:g}")


def _check_channel(layer: str, channel: int) -> Check:
    def check(shapes: Shapes) -> None:
        count = shapes[layer][1]
        if not 0 <= channel < count:
            raise FvexpError(
                f"channel {channel} is out of range for layer {layer!r}, which has {count} channels "
                f"(objective.channel must be 0..{count - 1})"
            )

    return check


def neuron(layer: str, channel: int, x: int | None = None, y: int | None = None) -> Objective:
    """One unit at one spatial position (the centre unless `x`, `y` are given)."""

    def value(acts: Mapping[str, Tensor]) -> Tensor:
        act = acts[layer]
        h, w = act.shape[-2:]
        return act[:, channel, h // 2 if y is None else y, w // 2 if x is None else x]

    def check_position(shapes: Shapes) -> None:
        shape = shapes[layer]
        if len(shape) != 4:
            raise FvexpError(f"layer {layer!r} has no spatial positions (shape {tuple(shape)}); use objective=channel")
        h, w = shape[-2:]
        if (x is not None and not 0 <= x < w) or (y is not None and not 0 <= y < h):
            raise FvexpError(
                f"position x={x}, y={y} is outside layer {layer!r}, whose map is {h}x{w} at this image "
                f"size; use objective.x in 0..{w - 1} and objective.y in 0..{h - 1}, or a larger render.size"
            )

    where = "centre" if x is None and y is None else f"x={x},y={y}"
    name = f"neuron {layer}:{channel}@{where}"
    return Objective(value, frozenset({layer}), name, (_check_channel(layer, channel), check_position))


def channel(layer: str, channel: int) -> Objective:
    """Mean activation of one channel over all positions: the article's default objective."""
    return Objective(
        lambda acts: acts[layer][:, channel].flatten(1).mean(1),
        frozenset({layer}),
        f"channel {layer}:{channel}",
        (_check_channel(layer, channel),),
    )


def layer(layer: str) -> Objective:
    """DeepDream: mean of squared activations of a whole layer, amplifying whatever is there."""
    return Objective(lambda acts: acts[layer].pow(2).flatten(1).mean(1), frozenset({layer}), f"layer {layer}")


def class_logit(label: int | str, layer: str, classes: str = "imagenet") -> Objective:
    """A class's pre-softmax logit, which the article finds gives better images than probability."""
    index = class_index(label, classes)
    return Objective(
        lambda acts: acts[layer][:, index], frozenset({layer}), f"logit {label}", (_check_channel(layer, index),)
    )


def class_prob(label: int | str, layer: str, classes: str = "imagenet") -> Objective:
    """A class's softmax probability: rises most easily by making other classes unlikely."""
    index = class_index(label, classes)
    return Objective(
        lambda acts: acts[layer].softmax(1)[:, index],
        frozenset({layer}),
        f"prob {label}",
        (_check_channel(layer, index),),
    )


def class_index(label: int | str, classes: str) -> int:
    """A class index from an index or a class name (e.g. `goldfish`), with suggestions on a typo."""
    names = class_names(classes)
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
        index = int(label)
        if not 0 <= index < len(names):
            raise FvexpError(f"class index {index} is out of range: {classes} has classes 0..{len(names) - 1}")
        return index
    lowered = [name.lower() for name in names]
    if label.lower() in lowered:
        return lowered.index(label.lower())
    raise unknown("class label", label, names, hint="objective.label takes a class name or an index")
