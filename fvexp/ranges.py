"""The values a piece's arguments accept, declared beside the piece and checked when it is built.

`@ranges(factor=at_least(1, "a downscaling factor of at least 1 (1: full resolution)"))` on a class or
a function checks each call's arguments and refuses a value out of range with an `OutOfRange` that
names the piece, the argument, the value and what is allowed: Python users get it from the
constructor (`LowRes(factor=0)`), and the application reads the same declaration (`declared`) to
refuse a config's value before anything is built, with the same reason. None always passes: it
means "the default" or "off" for every argument that allows it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fvexp.errors import OutOfRange

MAX_SIDE = 4096  # largest image side: a 4096 px image and the network's activations on it take gigabytes
Piece = TypeVar("Piece", bound=Callable[..., Any])


@dataclass(frozen=True)
class Range:
    """What one argument accepts: a test of the value, and the same in words for the message."""

    accepts: Callable[[Any], bool]
    allowed: str


def at_least(least: float, allowed: str) -> Range:
    return Range(lambda value: value >= least, allowed)


def above(bound: float, allowed: str) -> Range:
    return Range(lambda value: value > bound, allowed)


SIDE = Range(lambda value: 1 <= value <= MAX_SIDE, f"the image side in pixels, 1 to {MAX_SIDE}")


def ranges(**declared: Range) -> Callable[[Piece], Piece]:
    """Check the named arguments of every call of the decorated class (its `__init__`) or function."""

    def decorate(piece: Piece) -> Piece:
        piece.ranges = declared  # type: ignore[attr-defined]  # a function's wrapper copies it
        function = piece.__init__ if inspect.isclass(piece) else piece
        signature = inspect.signature(function)

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            check(piece, {name: value for name, value in bound.arguments.items() if name in declared})
            return function(*args, **kwargs)

        if inspect.isclass(piece):
            piece.__init__ = checked
            return piece
        return checked  # type: ignore[return-value]

    return decorate


def declared(piece: object) -> Mapping[str, Range]:
    """The ranges `@ranges` declared for `piece`; none for anything else."""
    return getattr(piece, "ranges", {})


def check(piece: Callable[..., Any], values: Mapping[str, Any]) -> None:
    """Raise `OutOfRange` for the first of `values` (argument: value) that its declared range refuses."""
    for name, value in values.items():
        limit = declared(piece).get(name)
        if limit is not None and value is not None and not limit.accepts(value):
            raise OutOfRange(piece, name, value, limit.allowed)
