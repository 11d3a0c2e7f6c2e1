"""What the console scripts share: argument types that argparse refuses in its own one line, the
`--store` option of the tools that read an MLflow store, and the one-line ending of an fvexp error."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from fvexp.errors import FvexpError
from fvexp.tracking.store import STORE_HELP, default_store

P = ParamSpec("P")
R = TypeVar("R")


def at_least_one(text: str) -> int:
    """A count that must be 1 or more (`--threads 0` would otherwise read as "not given")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give 1 or more")
    return value


def add_store(parser: argparse.ArgumentParser) -> None:
    """`--store URI`, by default $MLFLOW_TRACKING_URI, else the store `fvexp` writes from this folder."""
    parser.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI") or default_store(), help=STORE_HELP)


def one_line_errors(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A tool's `main` that ends an `FvexpError` as the line `NAME: error: ...` and exit code 1, no traceback."""

    def wrap(main: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(main)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return main(*args, **kwargs)
            except FvexpError as error:
                raise SystemExit(f"{name}: error: {error}") from None

        return guarded

    return wrap
