"""User-facing errors: say what was wrong, what is allowed, and the closest valid names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FvexpError(Exception):
    """A problem the user can fix by changing the command or the config; printed without a traceback."""


def closest(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The valid names that look most like `name`, best first."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not matches:  # fall back to names that share a prefix or contain the input
        matches = [c for c in choices if c.startswith(name) or name in c][:n]
    return matches


def unknown(kind: str, name: str, choices: Iterable[str], hint: str = "") -> FvexpError:
    """An error for a name that is not among `choices`, suggesting the closest ones."""
    suggestions = closest(name, choices)
    message = f"unknown {kind} {name!r}"
    if suggestions:
        message += "; closest valid: " + ", ".join(suggestions)
    if hint:
        message += f". {hint}"
    return FvexpError(message)
