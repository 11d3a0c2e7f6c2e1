"""Argument types the console scripts share, so that argparse refuses a bad value in its own one line."""

from __future__ import annotations

import argparse


def at_least_one(text: str) -> int:
    """A count that must be 1 or more (`--threads 0` would otherwise read as "not given")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; give 1 or more")
    return value
